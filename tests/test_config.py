"""Bad input is refused before anything runs, naming the key, value or file and the fix; outputs stay readable."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench import records
from kdbench.engine import config, train

GOOD = dict(widths=[784, 16, 10], epochs=1, train_fraction=0.02, val_size=500)


@pytest.mark.parametrize("bad, message", [
    ({"epochs": "ten"}, r"epochs must be an integer >= 1, got 'ten'"),
    ({"epochs": 0}, r"epochs must be an integer >= 1, got 0"),
    ({"epochs": 2.5}, r"epochs must be an integer"),
    ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
    ({"train_fraction": 0}, r"train_fraction must be a number in \(0, 1\], got 0"),
    ({"jitter": 30}, r"jitter must be .*\[0, 8\], got 30"),
    ({"lr": -1.0}, r"lr must be a number > 0"),
    ({"nesterov": "yes"}, r"nesterov must be true or false"),
    ({"widths": [784, 16, 11]}, r"widths \[784, 16, 11\] do not fit mnist.*\[784, \.\.\., 10\]"),
    ({"widths": [1040, 16, 31]}, r"widths .* do not fit mnist"),
    ({"dataset": "cifar"}, r"dataset: unknown dataset 'cifar'"),
    ({"variant": "hintn"}, r"variant: unknown KD variant 'hintn'.*registered"),
    ({"variant": "hinton", "variant_params": {"temperature": -2.0}}, r"temperature must be a number > 0, got -2"),
    ({"variant": "hinton", "variant_params": {"temperature": 0}}, r"temperature must be a number > 0, got 0"),
    ({"variant": "hinton", "variant_params": {"hard_weight": 2}}, r"hard_weight must be a number in \[0, 1\], got 2"),
    ({"variant": "hinton", "variant_params": {"temprature": 4.0}}, r"no parameter\(s\) \['temprature'\]"),
    ({"variant": "hinton", "variant_params": {"ensemble": "median"}}, r"ensemble must be one of"),
    ({"val_size": 60000}, r"val_size 60000 leaves no training data.*60000 images"),
    ({"dataset": "speech", "widths": [1040, 16, 31], "val_size": 2700}, r"val_size 2700 .*2700 utterances"),
    ({"transfer_classes": [3, 12]}, r"transfer_classes \[3, 12\] names classes outside 0\.\.9"),
    ({"subset_fraction": 0.5}, r"subset_fraction needs class_subset"),
    ({"bootstrap": 1}, r"bootstrap must be true or false, got 1"),
    ({"mixup": -0.5}, r"mixup must be a number >= 0 \(0 = off\), got -0.5"),
    ({"bootstrap": True, "class_subset": [3, 5], "widths": [784, 16, 3]}, r"bootstrap does not apply to a specialist"),
    ({"keep_best": True, "val_size": 0}, r"keep_best needs a validation split"),
    ({"teacher_pairing": "pairs"}, r"teacher_pairing must be"),
    ({"momentum": 0.0}, r"nesterov needs momentum > 0"),  # nesterov is on by default
    ({"precision": "fp16"}, r"precision must be 'fp32' or 'bf16', got 'fp16'"),
])
def test_a_bad_training_config_is_refused_with_its_key_and_the_fix(bad, message):
    with pytest.raises(config.ConfigError, match=message) as err:
        config.resolve({**GOOD, **bad})
    assert "Fix:" in str(err.value)


def test_a_good_config_resolves_to_every_key():
    out = config.resolve(GOOD)
    assert set(out) == set(config.DEFAULTS) and out["epochs"] == 1 and out["lr"] == config.DEFAULTS["lr"]
    assert config.resolve(out) == out  # idempotent: what the workflow resolved, the engine resolves again unchanged
    # a specialist's outputs are its cluster plus the dustbin
    assert config.resolve({**GOOD, "widths": [784, 16, 3], "class_subset": [3, 5]})["class_subset"] == [3, 5]


def test_user_variant_parameters_are_checked_by_kind(tmp_path):
    mod = tmp_path / "mine.py"
    mod.write_text("from kdbench.engine.losses import register, soft_kl\n"
                   "@register('scaled_kd', temperature=4.0, scale=1.0, mode='kl')\n"
                   "def scaled_kd(s, y, t, temperature, scale, mode):\n"
                   "    return {'soft': scale * soft_kl(s, t, temperature)}\n")
    base = {**GOOD, "variant": "scaled_kd", "variant_modules": [str(mod)]}
    assert config.resolve({**base, "variant_params": {"scale": 2, "temperature": 8.0}})["variant_params"]["scale"] == 2
    with pytest.raises(config.ConfigError, match=r"scale must be a finite number, got 'big'"):
        config.resolve({**base, "variant_params": {"scale": "big"}})
    with pytest.raises(config.ConfigError, match=r"temperature must be a number > 0"):  # shared names, same rule
        config.resolve({**base, "variant_params": {"temperature": -1.0}})


def _kdbench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "kdbench.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["--config-json", json.dumps({**GOOD, "epochs": "ten"})], r"epochs must be an integer >= 1, got 'ten'"),
    (["--config-json", json.dumps({**GOOD, "epochs": 0})], r"epochs must be an integer >= 1, got 0"),
    (["--config-json", json.dumps({**GOOD, "variant": "nope"})], r"unknown KD variant 'nope'"),
    (["--config-json", json.dumps({**GOOD, "widths": [784, 16, 16, 9]})], r"widths .* do not fit mnist"),
    (["--config-json", json.dumps({**GOOD, "jitter": 30})], r"jitter must be"),
    (["--config-json", "{epochs: 3"], r"cannot read the training config"),
    (["--config-json", json.dumps(GOOD), "--seeds", "3", "3"], r"--seeds 3 3: .*distinct"),
])
def test_kdbench_train_refuses_bad_input_before_anything_runs(tmp_path, args, message):
    import re
    r = _kdbench("train", *args, "--out", str(tmp_path / "run"), "--root", str(tmp_path / "no-data"), cwd=tmp_path)
    assert r.returncode != 0
    assert re.search(message, r.stderr), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "no-data").exists()


def test_an_unwritable_output_folder_fails_before_data_or_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run's folder should go")
    # the data root is empty: had the engine loaded data (or trained) first, the error would be about data
    with pytest.raises(OSError, match=r"cannot write the run's outputs to .*file/run.*Fix"):
        train.train(train.resolve_spec(GOOD), [0], blocker / "run", device="cpu", root=tmp_path / "no-data",
                    progress=False)
    assert not (tmp_path / "no-data").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_fails_before_training(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    with pytest.raises(OSError, match="cannot write the run's outputs"):
        train.train(train.resolve_spec(GOOD), [0], ro, device="cpu", root=tmp_path / "no-data", progress=False)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        records.atomic_write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == mode


def _profile_with(tmp_path, edit) -> str:
    import yaml
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "quick.yaml").read_text())
    edit(cfg)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _rename_seeds(c):
    c["seed"] = c.pop("seeds")


@pytest.mark.parametrize("edit, message", [
    (_rename_seeds, r"unknown key\(s\) 'seed' \(did you mean 'seeds'\?\)"),
    (lambda c: c.pop("specialists"), r"'specialists' is a required property"),
    (lambda c: c["mnist"]["teacher"].update(epocs=3),
     r"mnist.teacher: unknown key\(s\) 'epocs' \(did you mean 'epochs'"),
    (lambda c: c["mnist"]["sweep"].update(temperatures=[-1, 2]), r"mnist.sweep.temperatures.0: -1 is wrong"),
])
def test_kdbench_plan_validates_the_profile_in_a_few_lines(tmp_path, edit, message):
    import re
    r = _kdbench("plan", _profile_with(tmp_path, edit), cwd=tmp_path)
    assert r.returncode == 1 and re.search(message, r.stderr), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 12


def test_a_learning_rate_in_e_notation_is_a_number(tmp_path):
    from kdbench import profile
    path = tmp_path / "p.yaml"
    path.write_text("mnist:\n  teacher: {lr: 5e-2, dropout_input: 1e-1, jitter: 2}\n  name: hinton\n")
    cfg = profile.load(path)
    assert cfg["mnist"]["teacher"] == {"lr": 0.05, "dropout_input": 0.1, "jitter": 2}
    assert cfg["mnist"]["name"] == "hinton"
    good = profile.load(_profile_with(tmp_path, lambda c: c["mnist"]["baseline"].update(lr="5e-2")))
    assert good["mnist"]["baseline"]["lr"] == 0.05
    profile.validate(good)


@pytest.mark.parametrize("device, message", [
    ("gpu", r"--device gpu: not a device torch knows"),
    ("cuda", r"--device cuda: this machine has no usable CUDA GPU"),
])
def test_kdbench_train_refuses_a_device_it_cannot_use_before_writing(tmp_path, device, message):
    import re

    import torch
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = _kdbench("train", "--config-json", json.dumps(GOOD), "--out", str(tmp_path / "run"), "--device", device,
                 cwd=tmp_path)
    assert r.returncode == 2 and re.search(message, r.stderr), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()
