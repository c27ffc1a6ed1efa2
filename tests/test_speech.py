"""The speech front-end: checksums, filterbank, frame targets, windows, splits, utterance decoding."""
import dataclasses
import math
import shutil

import pytest
import torch

from kdbench.data import datasets as data
from kdbench.data import sampling, speech
from kdbench.engine import config


@pytest.fixture(scope="session")
def speech_cache(speech_root):
    """The documented split's feature cache, built once into the shared data directory."""
    speech.build_features(speech_root, "speech")
    return speech_root, torch.load(speech.features_path(speech_root, "speech"), weights_only=False)


def test_shipped_checksums_cover_every_recording():
    sums = speech.checksums()
    assert len(sums) == 3000
    digits = {speech.parse_name(n)[0] for n in sums}
    speakers = {speech.parse_name(n)[1] for n in sums}
    assert digits == set(range(10)) and speakers == set(speech.SPEAKERS)


def test_mel_filterbank_is_40_triangles_rising_in_frequency():
    fb = speech.mel_filterbank()
    assert fb.shape == (40, 129)
    assert (fb >= 0).all() and (fb.max(1).values <= 1.0 + 1e-6).all() and (fb.sum(1) > 0).all()
    peaks = fb.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all() and peaks[-1] > peaks[0]


def test_a_tone_lights_the_filter_around_its_frequency():
    t = torch.arange(8000) / 8000.0
    feats = speech.log_mel(0.5 * torch.sin(2 * math.pi * 1000.0 * t))
    assert feats.shape == ((8000 - speech.WIN) // speech.HOP + 1, 40)
    fb = speech.mel_filterbank()
    bin_1k = round(1000.0 / (4000.0 / 128))
    assert int(feats.mean(0).argmax()) == int(fb[:, bin_1k].argmax())


def test_frame_targets_silence_then_three_equal_states():
    g = torch.Generator().manual_seed(0)
    quiet = 1e-4 * torch.randn(1600, generator=g)
    tone = 0.5 * torch.sin(2 * math.pi * 440.0 * torch.arange(2400) / 8000.0)
    audio = torch.cat([quiet, tone, quiet])
    n = speech.log_mel(audio).shape[0]
    labels = speech.frame_targets(audio, n, digit=7)
    assert labels[0] == 0 and labels[-1] == 0
    voiced = labels[labels > 0]
    assert set(voiced.tolist()) == {22, 23, 24}  # 1 + 3 * 7 + {0, 1, 2}
    counts = torch.bincount(voiced)[22:]
    assert counts.max() - counts.min() <= 1
    assert (labels[labels > 0].diff() >= 0).all()  # states in order


def test_split_membership():
    assert speech.in_test("speech", "theo", 4) and not speech.in_test("speech", "theo", 5)
    assert speech.in_test("speech_unseen", "george", 30) and speech.in_test("speech_unseen", "lucas", 0)
    assert not speech.in_test("speech_unseen", "jackson", 0)
    with pytest.raises(ValueError, match="unknown speech split"):
        speech.in_test("speech_other", "theo", 0)


def test_cache_windows_are_the_26_frames_ending_5_after_the_target(speech_cache):
    root, blob = speech_cache
    assert blob["utterances"][:, 3].sum() == 300  # takes 0-4 of 6 speakers x 10 digits
    assert (blob["utterances"][blob["utterances"][:, 3].bool(), 2] <= 4).all()
    tr = speech.load("speech", True, root)
    assert tr.inputs(torch.tensor([0])).shape == (1, 26 * 40)
    # recompute one utterance from its wav: the window of frame t holds frames t-20 .. t+5 (edges repeated)
    u = int((blob["utterances"][:, 3] == 0).nonzero()[123])
    name = blob["names"][u]
    feats = (speech.log_mel(speech.read_wav(speech.fsdd_dir(root) / name)) - blob["mean"]) / blob["std"]
    rows = (tr.groups == u).nonzero().flatten()
    assert rows.numel() == feats.shape[0]
    for t in (0, 3, feats.shape[0] - 1):
        w = tr.inputs(rows[t:t + 1])[0].reshape(26, 40)
        for j in range(26):
            src = min(max(t - 20 + j, 0), feats.shape[0] - 1)
            torch.testing.assert_close(w[j], feats[src], atol=1e-4, rtol=1e-4)
    # standardized with the training pool's statistics only
    pool = tr.inputs(torch.arange(len(tr)))[:, 20 * 40:21 * 40]
    torch.testing.assert_close(pool.mean(0), torch.zeros(40), atol=1e-3, rtol=0)
    torch.testing.assert_close(pool.std(0), torch.ones(40), atol=1e-3, rtol=0)


def test_validation_holds_out_whole_utterances(speech_cache):
    root, _ = speech_cache
    tr = speech.load("speech", True, root)
    tr_idx, val_idx = data.validation_split(len(tr), 50, 3, tr.groups)
    g_tr, g_val = set(tr.groups[tr_idx].tolist()), set(tr.groups[val_idx].tolist())
    assert len(g_val) == 50 and not (g_tr & g_val)
    assert len(tr_idx) + len(val_idx) == len(tr)


def test_val_speakers_leave_training_and_alone_make_the_validation_split(speech_cache):
    root, _ = speech_cache
    tr = speech.load("speech", True, root)
    cfg = config.resolve_spec({"dataset": "speech", "widths": [1040, 31], "val_size": 40, "val_speakers": ["theo"]})
    tr_idx, val_idx = sampling.training_indices(cfg.data, tr.y, tr.groups, tr.speakers)
    theo = speech.SPEAKERS.index("theo")
    assert set(tr.speakers[val_idx].tolist()) == {theo} and theo not in set(tr.speakers[tr_idx].tolist())
    assert len(set(tr.groups[val_idx].tolist())) == 40
    # every frame of the other five speakers trains; theo's other utterances are used by neither
    assert len(tr_idx) == int((tr.speakers != theo).sum())
    cfg_all = dataclasses.replace(cfg.data, val_size=10)
    assert not torch.equal(sampling.training_indices(cfg_all, tr.y, tr.groups, tr.speakers)[1], val_idx)


@pytest.mark.parametrize("bad, says", [
    ({"val_speakers": ["george"], "dataset": "speech_unseen"}, "some, not all, of the training speakers"),
    ({"val_speakers": ["nobody"]}, "some, not all"),
    ({"val_speakers": ["theo"], "val_size": 450}, "below the 450 utterances"),
    ({"val_speakers": ["theo"], "dataset": "fashion_mnist", "widths": [784, 10]}, "speech splits only"),
])
def test_bad_val_speakers_are_refused_with_the_fix(bad, says):
    with pytest.raises(config.ConfigError, match=says):
        config.resolve({"dataset": "speech", "widths": [1040, 31], "val_size": 40, **bad})


def test_utterance_decoding_sums_digit_and_silence_mass():
    # utterance 0 is a 3 (two silence frames, three voiced), utterance 1 a 5
    frames = torch.tensor([0, 0, 10, 11, 12, 0, 16, 17, 18])
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    logits = torch.full((9, 31), -5.0)
    logits[torch.arange(9), frames] = 5.0
    digits = torch.tensor([3, 5])
    r = speech.utterance_errors(logits, groups, digits)[0]
    assert r == {"utterance_errors": 0, "utterances": 2, "utterance_error_pct": 0.0}
    # silence frames speak for no digit; one confident wrong-state voiced frame does not outvote three right ones
    logits2 = logits.clone()
    logits2[0, 0], logits2[0, 1 + 3 * 8] = -5.0, 5.0
    assert speech.utterance_errors(logits2, groups, digits)[0]["utterance_errors"] == 0
    both = speech.utterance_errors(torch.stack([logits, logits.flip(0)]), groups, digits)
    assert both[0]["utterance_errors"] == 0 and both[1]["utterance_errors"] == 2


def _writable_copy(src, dst):
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def test_a_corrupt_or_missing_recording_is_named(tmp_path, mirror):
    root = tmp_path / "d"
    _writable_copy(mirror / "FSDD" / "recordings", root / "FSDD" / "recordings")
    victim = root / "FSDD" / "recordings" / "4_theo_17.wav"
    victim.write_bytes(victim.read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(speech.SpeechDataError, match="4_theo_17.wav.*kdbench data fetch --dataset fsdd"):
        speech.verify(root)
    victim.unlink()
    with pytest.raises(speech.SpeechDataError, match="4_theo_17.wav is missing"):
        speech.verify(root)
    # the mirror fills the gap, verified
    speech.fetch(root, mirror=mirror, allow_download=False)
    speech.verify(root)


def test_a_corrupt_mirror_writes_nothing(tmp_path, mirror):
    bad = tmp_path / "mirror"
    _writable_copy(mirror / "FSDD", bad / "FSDD")
    (bad / "FSDD" / "recordings" / "0_george_0.wav").write_bytes(b"RIFF")
    with pytest.raises(speech.SpeechDataError, match="0_george_0.wav has the wrong sha256"):
        speech.fetch(tmp_path / "root", mirror=bad, allow_download=False)
    assert not (tmp_path / "root" / "FSDD").exists()
