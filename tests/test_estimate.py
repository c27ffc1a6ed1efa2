"""Issue 25: before a run the workflow says how long its training should take here, from the epochs measured here."""
import json

import pytest

from kdbench import estimate
from kdbench.plan import Job


def record(root, job, dataset, widths, members, epoch_seconds, device="cpu: Test CPU (AVX2), 2 threads", **cfg):
    path = root / "quick" / "runs" / job / "seed0" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"config": {"dataset": dataset, "widths": widths, **cfg}, "device": device,
                                "members_trained_together": members, "epoch_seconds": epoch_seconds}))


def job(name, dataset, widths, seeds, epochs, **cfg):
    return Job(name, tuple(seeds), dataset, {"dataset": dataset, "widths": widths, "epochs": epochs, **cfg})


def test_a_job_costs_its_epochs_at_the_measured_seconds_per_unit_of_work(tmp_path):
    record(tmp_path, "a", "mnist", [784, 100, 10], 2, [3.0, 4.0, 5.0])       # 4 s per epoch (the median)
    record(tmp_path, "b", "mnist", [784, 100, 10], 2, [9.0], device="cuda: Big GPU")  # another machine: ignored
    runs = estimate.measured(tmp_path, "cpu: Test CPU")
    assert list(runs) == ["mnist"] and len(runs["mnist"]) == 1
    units = 2 * (784 * 100 + 100 * 10)
    # twice the members, a tenth of the data, 30 epochs: 30 x 4 s x 2 x 0.1
    todo = [job("x", "mnist", [784, 100, 10], [0, 1, 2, 3], 30, train_fraction=0.1),
            job("y", "speech", [1040, 32, 31], [0], 5)]
    seconds, unknown = estimate.expected_seconds(todo, runs)
    assert runs["mnist"][0] == (units, 4.0)
    assert seconds == pytest.approx(30 * 4.0 * 2 * 0.1)
    assert unknown == ["speech"]  # no measured run on it: named, not guessed


def test_the_message_says_hours_loudly_and_names_a_smaller_profile(tmp_path, monkeypatch):
    record(tmp_path, "a", "mnist", [784, 800, 800, 10], 2, [600.0])
    monkeypatch.setattr(estimate, "device_kind", lambda device: "cpu: Test CPU")
    cfg = {"profile": "paper", "device": "cpu"}
    long = estimate.message(cfg, [job("teacher", "mnist", [784, 800, 800, 10], [0, 1], 20)], tmp_path)
    assert "1 training job of profile 'paper' to run; about 3.3 h" in long and "long run" in long
    assert "config/quick.yaml" in long
    short = estimate.message(cfg, [job("t", "mnist", [784, 800, 800, 10], [0, 1], 1)], tmp_path)
    assert "about 10 min" in short and "long run" not in short
    assert estimate.message(cfg, [], tmp_path) is None


def test_a_dataset_measured_only_on_another_cpu_is_estimated_from_it_and_says_so(tmp_path, monkeypatch):
    """A new CPU model (the committed runs were timed on another) gets an estimate from the other CPU's epochs,
    labelled as such; a GPU's epochs are never used for a CPU; no run anywhere gives no estimate, not "0 min"."""
    record(tmp_path, "a", "mnist", [784, 800, 800, 10], 2, [60.0], device="cpu: Other CPU (AVX2), 2 threads")
    record(tmp_path, "b", "speech", [1040, 32, 31], 2, [1.0], device="cuda: Big GPU")
    monkeypatch.setattr(estimate, "device_kind", lambda device: "cpu: Test CPU (AVX512)")
    cfg = {"profile": "paper", "device": "cpu"}
    text = estimate.message(cfg, [job("t", "mnist", [784, 800, 800, 10], [0, 1], 10)], tmp_path)
    assert "about 10 min" in text and "mnist from epochs measured on another cpu" in text, text
    none = estimate.message(cfg, [job("s", "speech", [1040, 32, 31], [0, 1], 10)], tmp_path)
    assert "no estimate: no run on speech was measured on any cpu" in none and "0 min" not in none, none


def test_a_job_with_records_but_no_weights_is_to_train_and_the_plan_says_so(tmp_path, monkeypatch):
    """Issue 39: what `kdbench plan` counts is what snakemake plans: a job missing any output (a seed's record, its
    model.pt or logits.pt, which git does not keep) trains again; a job with all of them does not. The message says
    how many retrain committed runs, and a short plan lists its jobs, prerequisites first."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(estimate, "device_kind", lambda device: "cpu: Test CPU")
    runs = tmp_path / "results" / "quick" / "runs"
    record(tmp_path / "results", "teacher", "mnist", [784, 100, 10], 2, [6.0])  # records, no weights: a fresh clone
    (runs / "teacher" / "seed1").mkdir()
    (runs / "teacher" / "seed1" / "metrics.json").write_text("{}")
    done = runs / "baseline"
    for f in ("model.pt", "logits.pt", "seed0/metrics.json", "seed1/metrics.json"):
        (done / f).parent.mkdir(parents=True, exist_ok=True)
        (done / f).write_text("x")
    jobs = {n: job(n, "mnist", [784, 100, 10], [0, 1], 20) for n in ("teacher", "baseline", "variants/e/mine")}
    todo = estimate.not_run(jobs, runs)
    assert [j.name for j in todo] == ["teacher", "variants/e/mine"]
    assert estimate.recorded(todo, runs) == 1
    text = estimate.announce({"profile": "quick", "device": "cpu"}, todo)
    assert text.startswith("kdbench: 2 training jobs of profile 'quick' to run; about 4 min"), text
    assert "kdbench: 1 of them retrain runs whose records are committed" in text
    assert "kdbench: first, what the variants' students need: teacher (about 2 min)" in text
    assert "kdbench: then the variants' students: variants/e/mine (about 2 min)" in text
    (done / "model.pt").unlink()  # one output gone: it trains again
    assert [j.name for j in estimate.not_run(jobs, runs)] == ["teacher", "baseline", "variants/e/mine"]
