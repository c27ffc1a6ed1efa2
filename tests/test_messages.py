"""Issue 39 item 4: a bad profile gets one short message with the key's place and a fix (`kdbench plan`, which runs
the checks the workflow runs when it starts)."""
import copy
import subprocess
import sys

import pytest
import yaml
from workflow_helpers import SMOKE


def _set(path, value):
    def mutate(cfg):
        *parents, last = path
        for p in parents:
            cfg = cfg[p]
        cfg[last] = value
    return mutate


@pytest.mark.parametrize("mutate, expected", [
    (_set(["variants"], ["hinton", "hintn"]), ["unknown KD variant 'hintn' (did you mean 'hinton'?)",
                                               "docs/adding-a-variant.md"]),
    (_set(["variant_modules"], ["nowhere.py"]), ["nowhere.py not found", "Fix:", "docs/adding-a-variant.md"]),
    (_set(["mnist", "teacher", "lr"], "fast"), ["mnist.teacher.lr: 'fast' is wrong", "Fix: write a number here"]),
    (_set(["seeds"], []), ["seeds: [] is wrong", "Fix: list at least 1 item"]),
    (_set(["variant_params"], {"hinton": {"temperature": -1.0}}),
     ["variant_params.hinton: variant 'hinton': temperature must be a number > 0, got -1.0",
      "Fix: correct it under variant_params.hinton"]),
])
def test_a_bad_profile_gets_a_short_message_with_a_fix(tmp_path, mutate, expected):
    bad = copy.deepcopy(yaml.safe_load(SMOKE.read_text()))
    mutate(bad)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    r = subprocess.run([sys.executable, "-m", "kdbench.cli", "plan", str(path)], capture_output=True, text=True,
                       cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert all(e in out for e in expected), out
    assert len(out.strip().splitlines()) <= 4 and "Traceback" not in out, out


def test_kdbench_help_lists_every_command():
    r = subprocess.run([sys.executable, "-m", "kdbench.cli", "--help"], capture_output=True, text=True)
    for command in ("train", "plan", "check", "compare", "report", "aggregate", "data"):
        assert command in r.stdout, r.stdout
