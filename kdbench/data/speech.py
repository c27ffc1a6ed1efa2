"""Spoken digits as a frame-classification task built like the paper's speech experiments (sec. 4 and 6).

What this file achieves: the Free Spoken Digit Dataset (3000 recordings, 6 speakers x 10 digits x 50 takes, 8 kHz)
arrives verified in `ROOT/FSDD/recordings/` (local copy, `$KDBENCH_MIRROR/FSDD`, else the dataset's public release
archive at a pinned commit), every file checked against the sha256 list the project ships
(`kdbench/data/checksums/fsdd.sha256`, taken from the mirror's SHA256SUMS). From them `build_features` makes one cache
file per split:

- features: 40 log-mel filterbank coefficients per 25 ms Hamming window with a 10 ms advance (256-point FFT power
  spectrum and an HTK mel filterbank over 0-4 kHz, written here in torch: torchaudio's newest release pins an older
  torch);
- frame targets standing in for the paper's HMM states: frames more than 25 dB below the utterance's loudest frame
  before the first / after the last loud frame are silence (class 0); the voiced span between is cut into three equal
  segments, states 1 + 3*digit + {0, 1, 2}: 31 classes;
- an example is a window of 26 consecutive frames whose 21st frame carries the target (the paper's input); windows
  are gathered on the device from one padded frame tensor (utterance edges repeat the edge frame), never stored;
- features standardized with mean/std of the training-pool utterances only.

Splits: `speech` is the dataset's documented one (takes 0-4 of every speaker and digit are the test set);
`speech_unseen` tests on every take of george and lucas and trains on the other four speakers. The validation split
(kdbench.data.sampling) takes whole utterances out of the training pool, or, with `val_speakers`, whole speakers: their
utterances leave training and validation draws from them only, so a speaker-independent test is validated on voices
the net never heard. `utterance_errors` turns frame log-probabilities into the
analog of word error: each digit's score sums, over the utterance's frames, log(p(silence) + sum of p(its 3 states)).
The end of the file registers both splits in the dataset registry (`kdbench.data.registry`).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import wave
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from kdbench.data import registry
from kdbench.records import atomic_torch_save, default_mode, file_lock

FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_ARCHIVE = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{FSDD_COMMIT}.tar.gz"
SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
SPLITS = {
    "speech": "documented split: takes 0-4 of every speaker and digit are the test set",
    "speech_unseen": "speaker-independent split: george and lucas are the test set",
}
UNSEEN_TEST_SPEAKERS = ("george", "lucas")
SAMPLE_RATE, WIN, HOP, N_FFT, N_MELS = 8000, 200, 80, 256, 40
CONTEXT, TARGET_FRAME = 26, 20          # 26-frame window, target = its 21st frame
SILENCE_DB = 25.0
NUM_CLASSES = 31
FEATURE_VERSION = 2                     # bump when the recipe changes: old caches are rebuilt


class SpeechDataError(RuntimeError):
    pass


def checksums() -> dict[str, str]:
    """{'recordings/<digit>_<speaker>_<take>.wav': sha256} for all 3000 recordings."""
    text = resources.files("kdbench.data").joinpath("checksums/fsdd.sha256").read_text()
    return {name: h for h, name in (line.split() for line in text.splitlines() if line.strip())}


def fsdd_dir(root: Path | str) -> Path:
    return Path(root) / "FSDD"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify(root: Path | str) -> None:
    """Every recording present with the shipped checksum, else one error naming the first bad file and the fix."""
    base = fsdd_dir(root)
    bad = []
    for name, expected in checksums().items():
        p = base / name
        if not p.exists():
            bad.append(f"{p} is missing")
        elif (actual := _sha256(p)) != expected:
            bad.append(f"{p} has sha256 {actual}, expected {expected}")
    if bad:
        raise SpeechDataError(
            f"FSDD: {len(bad)} of 3000 recordings are missing or corrupt; first: {bad[0]}. Fix: delete {base} and run "
            f"`kdbench data fetch --dataset fsdd --root {root}` with $KDBENCH_MIRROR pointing at an offline mirror "
            f"(e.g. ../shared/data) or with internet access to {FSDD_ARCHIVE}")


def _copy_verified(files: dict[str, Path], dst: Path) -> None:
    """Copy name -> source file into dst after checking every checksum; nothing is written if one is wrong."""
    sums = checksums()
    for name, src in files.items():
        if _sha256(src) != sums[name]:
            raise SpeechDataError(f"FSDD: {src} has the wrong sha256 (expected {sums[name]}); the source is corrupt. "
                                  f"Fix: restore it, or delete it to fall back to the next source")
    for name, src in files.items():
        out = dst / name
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
        os.fchmod(fd, default_mode())
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, out)


def fetch(root: Path | str, mirror: Path | str | None = None, allow_download: bool = True) -> Path:
    """Verified recordings in ROOT/FSDD/recordings from the first source that has them; returns ROOT/FSDD."""
    root = Path(root)
    with file_lock(root / ".kdbench-fsdd.lock"):  # two feature jobs may fetch into one folder at once
        return _fetch(root, mirror, allow_download)


def _fetch(root: Path, mirror, allow_download: bool) -> Path:
    base = fsdd_dir(root)
    names = list(checksums())
    if all((base / n).exists() for n in names):
        verify(root)
        return base
    mirror = mirror if mirror is not None else os.environ.get("KDBENCH_MIRROR")
    if mirror and all((Path(mirror) / "FSDD" / n).exists() for n in names):
        _copy_verified({n: Path(mirror) / "FSDD" / n for n in names}, base)
    elif allow_download:
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "fsdd.tar.gz"
            try:
                urllib.request.urlretrieve(FSDD_ARCHIVE, archive)
            except OSError as e:
                raise SpeechDataError(f"FSDD: no local copy in {base}, no mirror (set $KDBENCH_MIRROR), and the "
                                      f"download of {FSDD_ARCHIVE} failed: {e}. Fix: point KDBENCH_MIRROR at a folder "
                                      f"holding FSDD/recordings/*.wav, or copy the 3000 recordings into "
                                      f"{base / 'recordings'}; without them only the MNIST section runs "
                                      f"(`snakemake mnist_section`)") from None
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if "/recordings/" in m.name and m.name.endswith(".wav")]
                for m in members:  # only regular files, flattened into tmp/recordings: no path tricks
                    if m.isfile():
                        (Path(tmp) / "recordings").mkdir(exist_ok=True)
                        (Path(tmp) / "recordings" / Path(m.name).name).write_bytes(tar.extractfile(m).read())
            missing = [n for n in names if not (Path(tmp) / n).exists()]
            if missing:
                raise SpeechDataError(f"FSDD: the archive lacks {len(missing)} recordings, e.g. {missing[0]}")
            _copy_verified({n: Path(tmp) / n for n in names}, base)
    else:
        raise SpeechDataError(f"FSDD: {base} is incomplete and no source was allowed; set $KDBENCH_MIRROR")
    verify(root)
    return base


def read_wav(path: Path) -> torch.Tensor:
    """16-bit mono PCM -> float32 in [-1, 1)."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != SAMPLE_RATE:
            raise SpeechDataError(f"{path}: expected 16-bit mono {SAMPLE_RATE} Hz PCM")
        raw = w.readframes(w.getnframes())
    return torch.from_numpy(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(n_mels, n_fft//2 + 1) triangular filters equally spaced on the HTK mel scale from 0 Hz to Nyquist."""
    def mel(f):
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = hz(torch.linspace(0.0, float(mel(torch.tensor(sample_rate / 2.0))), n_mels + 2, dtype=torch.float64))
    bins = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins - lo) / (mid - lo)
    down = (hi - bins) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(torch.float32)


def _frames(audio: torch.Tensor) -> torch.Tensor:
    """(samples,) -> (frames, WIN): 25 ms frames every 10 ms from the first sample (short clips zero-padded)."""
    if audio.shape[0] < WIN:
        audio = torch.nn.functional.pad(audio, (0, WIN - audio.shape[0]))
    return audio.unfold(0, WIN, HOP)


def log_mel(audio: torch.Tensor, fbank: torch.Tensor | None = None) -> torch.Tensor:
    """(samples,) -> (frames, 40) log-mel energies: Hamming-windowed 25 ms frames every 10 ms, power spectrum of
    a 256-point FFT, mel filterbank, log."""
    fbank = mel_filterbank() if fbank is None else fbank
    frames = _frames(audio) * torch.hamming_window(WIN, periodic=False)
    power = torch.fft.rfft(frames, n=N_FFT).abs().pow(2)  # (frames, 129)
    return torch.log(power @ fbank.T + 1e-10)


def frame_targets(audio: torch.Tensor, n_frames: int, digit: int, silence_db: float = SILENCE_DB) -> torch.Tensor:
    """Silence (0) outside the span of frames within silence_db of the loudest; the span in 3 equal states."""
    frames = _frames(audio)[:n_frames]
    energy_db = 10.0 * torch.log10(frames.pow(2).mean(-1) + 1e-10)
    loud = (energy_db >= energy_db.max() - silence_db).nonzero().flatten()
    first, last = int(loud[0]), int(loud[-1])
    labels = torch.zeros(n_frames, dtype=torch.long)
    span = last - first + 1
    pos = torch.arange(span)
    labels[first:last + 1] = 1 + 3 * digit + torch.clamp(pos * 3 // span, max=2)
    return labels


def parse_name(name: str) -> tuple[int, str, int]:
    digit, speaker, take = Path(name).stem.split("_")
    return int(digit), speaker, int(take)


def in_test(split: str, speaker: str, take: int) -> bool:
    if split == "speech":
        return take <= 4
    if split == "speech_unseen":
        return speaker in UNSEEN_TEST_SPEAKERS
    raise ValueError(f"unknown speech split {split!r}; known: {sorted(SPLITS)}")


def train_utterances(split: str, speakers: list[str] | None = None) -> int:
    """How many recordings of FSDD (6 speakers x 10 digits x 50 takes), of all speakers or of `speakers`, fall in the
    split's training part."""
    return sum(not in_test(split, speaker, take) for speaker in set(speakers or SPEAKERS) for take in range(50)) * 10


def train_speakers(split: str) -> list[str]:
    """The speakers with recordings in the split's training part."""
    return [s for s in SPEAKERS if train_utterances(split, [s])]


def features_path(root: Path | str, split: str) -> Path:
    return fsdd_dir(root) / "features" / f"{split}.pt"


def build_features(root: Path | str, split: str, out: Path | str | None = None) -> Path:
    """Compute the split's cache (one pass over the recordings) and write it atomically; returns its path."""

    if split not in SPLITS:
        raise ValueError(f"unknown speech split {split!r}; known: {sorted(SPLITS)}")
    base = fetch(root)
    fbank = mel_filterbank()
    sums = checksums()
    names = sorted(sums)
    pad_before, pad_after = TARGET_FRAME, CONTEXT - TARGET_FRAME - 1
    chunks, starts, labels, utt_of, utt_rows = [], [], [], [], []
    offset = 0
    for u, name in enumerate(names):
        digit, speaker, take = parse_name(name)
        audio = read_wav(base / name)
        feats = log_mel(audio, fbank)
        n = feats.shape[0]
        padded = torch.cat([feats[:1].expand(pad_before, -1), feats, feats[-1:].expand(pad_after, -1)])
        chunks.append(padded)
        starts.append(offset + torch.arange(n))  # window of frame t starts at padded row t
        labels.append(frame_targets(audio, n, digit))
        utt_of.append(torch.full((n,), u, dtype=torch.long))
        utt_rows.append((digit, SPEAKERS.index(speaker), take, int(in_test(split, speaker, take)), n))
        offset += padded.shape[0]
    frames = torch.cat(chunks)
    utt = torch.tensor(utt_rows, dtype=torch.long)  # (U, 5): digit, speaker, take, is_test, n_frames
    starts, labels, utt_of = torch.cat(starts), torch.cat(labels), torch.cat(utt_of)
    is_test = utt[utt_of, 3].bool()
    # statistics of the real (unpadded) training-pool frames only
    pool_rows = starts[~is_test] + TARGET_FRAME
    mean, std = frames[pool_rows].mean(0), frames[pool_rows].std(0)
    frames = (frames - mean) / std
    out = Path(out) if out is not None else features_path(root, split)
    atomic_torch_save(out, {
        "version": FEATURE_VERSION, "split": split, "description": SPLITS[split],
        "frames": frames, "starts": starts, "labels": labels, "utterance": utt_of, "is_test": is_test,
        "utterances": utt, "utterance_columns": ["digit", "speaker", "take", "is_test", "n_frames"],
        "names": names, "speakers": SPEAKERS, "mean": mean, "std": std,
        "settings": {"sample_rate": SAMPLE_RATE, "win": WIN, "hop": HOP, "n_fft": N_FFT, "n_mels": N_MELS,
                     "context": CONTEXT, "target_frame": TARGET_FRAME, "silence_db": SILENCE_DB},
        "recordings_sha256": hashlib.sha256("".join(f"{sums[n]}{n}" for n in names).encode()).hexdigest()})
    return out


def load_cache(root: Path | str, split: str, build_missing: bool = True) -> dict:
    path = features_path(root, split)
    if not path.exists():
        if not build_missing:
            raise SpeechDataError(f"{path} is missing; run `kdbench data features --split {split} --root {root}`")
        build_features(root, split)
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if blob.get("version") != FEATURE_VERSION:
        if not build_missing:
            raise SpeechDataError(f"{path} was made by an older feature recipe; delete it and rebuild")
        build_features(root, split)
        blob = torch.load(path, map_location="cpu", weights_only=False)
    return blob


@dataclass
class FrameSplit:
    """Frame examples of one part of a speech split: window starts into `frames`, targets, utterance ids."""
    x: torch.Tensor       # (N,) window start rows into frames
    y: torch.Tensor       # (N,) state targets
    groups: torch.Tensor  # (N,) utterance ids
    frames: torch.Tensor  # (P, 40) standardized, padded
    dataset: str
    fingerprint: str = ""  # recipe version and recordings: a checkpoint resumes only on the same features
    speakers: torch.Tensor | None = None  # (N,) speaker of every frame, an index into SPEAKERS

    def __len__(self) -> int:
        return self.y.shape[0]

    def inputs(self, idx: torch.Tensor | None = None, max_shift: int = 0) -> torch.Tensor:
        """(..., 26 * 40) float windows of the examples idx (all if None), one gather (no jitter for speech)."""
        starts = self.x if idx is None else self.x[idx]
        rows = starts.unsqueeze(-1) + torch.arange(CONTEXT, device=starts.device)
        return self.frames[rows].flatten(-2)


def load(split: str, train: bool, root: Path | str, device: str | torch.device = "cpu") -> FrameSplit:
    blob = load_cache(root, split)
    keep = ~blob["is_test"] if train else blob["is_test"]
    frames = blob["frames"].to(device)
    speakers = blob["utterances"][blob["utterance"][keep], 1]
    return FrameSplit(blob["starts"][keep].to(device), blob["labels"][keep].to(device),
                      blob["utterance"][keep].to(device), frames, split,
                      f"{split}-v{blob['version']}-{blob['recordings_sha256'][:16]}", speakers)


def utterance_errors(logits: torch.Tensor, groups: torch.Tensor, utterance_digits: torch.Tensor) -> list[dict]:
    """logits (K, N, 31) of the frames of some utterances, groups (N,) their utterance ids, utterance_digits (U,):
    per member the utterance errors when each utterance takes the digit maximizing
    sum_t log(p_t(silence) + sum_{s in digit's states} p_t(s))."""
    if logits.dim() == 2:
        logits = logits.unsqueeze(0)
    logp = torch.log_softmax(logits.float(), -1)
    states = logp[..., 1:].reshape(*logp.shape[:-1], 10, 3)
    per_digit = torch.logsumexp(torch.cat([states, logp[..., :1, None].expand(*logp.shape[:-1], 10, 1)], -1), -1)
    ids, inverse = torch.unique(groups, return_inverse=True)
    scores = torch.zeros(logp.shape[0], ids.shape[0], 10, dtype=logp.dtype)
    scores.index_add_(1, inverse.cpu(), per_digit.cpu())
    wrong = scores.argmax(-1) != utterance_digits[ids.cpu()]
    n = ids.shape[0]
    return [{"utterance_errors": int(w.sum()), "utterances": n, "utterance_error_pct": 100.0 * float(w.sum()) / n}
            for w in wrong]


def describe(blob: dict) -> str:
    utt = blob["utterances"]
    test = utt[:, 3].bool()
    return (f"{blob['split']}: {int((~test).sum())} training-pool / {int(test.sum())} test utterances, "
            f"{int((~blob['is_test']).sum())} / {int(blob['is_test'].sum())} frames, "
            f"{float((blob['labels'] == 0).float().mean()):.1%} silence")


# ----------------------------------------------------------------------------------------------------------------
# the registry's entries: one per split, each reading its own feature cache

CLASS_NAMES = ("sil",) + tuple(f"{d}.{s}" for d in range(10) for s in range(3))
TITLES = {"speech": "Spoken digits, documented split (takes 0-4 of every speaker are the test set)",
          "speech_unseen": "Spoken digits, unseen speakers (george and lucas are the test set)"}


def prepare(split: str, root: Path | str, mirror: Path | str | None = None, allow_download: bool = True) -> Path:
    """Verified recordings, then the split's feature cache (built unless current); returns the cache's path."""
    fetch(root, mirror, allow_download)
    load_cache(root, split)
    return features_path(root, split)


def _entry(split: str) -> registry.Dataset:
    return registry.Dataset(
        split, TITLES[split], CLASS_NAMES, (CONTEXT, N_MELS), train_utterances(split), "utterances",
        files=lambda root: [features_path(root, split)],
        fetch=lambda root, mirror=None, allow_download=True: prepare(split, root, mirror, allow_download),
        load=lambda train, root, device: load(split, train, root, device), mirror_folder="FSDD")


for _split in SPLITS:
    registry.register(_entry(_split))
