"""The smoke profile runs the whole DAG end to end in a temporary directory; bad config stops before any job."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from workflow_helpers import REPO, SMOKE, snakemake

from kdbench.records import run_identity
from kdbench.report.aggregate import SHARE_METRICS
from kdbench.sections import mnist

ROWS = tuple(yaml.safe_load(SMOKE.read_text())["ensembles"]["datasets"])  # speech_narrow reads the speech split


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, all_data_root):
    """The smoke profile plus the example variant of docs/adding-a-variant.md, copied into a temporary file."""
    work = tmp_path_factory.mktemp("smoke")
    example = re.search(r"```python\n(# my_variants.py.*?)```",
                        (REPO / "docs" / "adding-a-variant.md").read_text(), re.S).group(1)
    (work / "my_variants.py").write_text(example)
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["variant_modules"] = ["my_variants.py"]  # relative to the working directory, as a checkout would have it
    cfg["variants"] = cfg["variants"] + ["js_kd"]
    configfile = work / "config.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    r = snakemake(work, data_root=all_data_root, configfile=configfile)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work / "results" / "smoke"


def test_summary_has_every_row_of_the_section(smoke_run):
    cfg = yaml.safe_load(SMOKE.read_text())
    summary = pd.read_csv(smoke_run / "summary.csv")
    assert list(summary.columns) == ["section", "table", "system", "metric", "paper", "mean", "std", "ci95_low",
                                     "ci95_high", "n_seeds", "unit"]
    # every *_pct row (a claim or a metric) carries the 95% t interval of its per-seed values
    pct = summary[summary.metric.str.endswith("_pct") & (summary.n_seeds >= 2) & (summary["std"] > 0)]
    assert len(pct) > 20 and (pct.ci95_low < pct["mean"]).all() and (pct["mean"] < pct.ci95_high).all()
    summary = summary[summary.section == "mnist"]
    expected = {(s, "test_errors") for s in ["teacher", "baseline", "distilled_T20"] + mnist.sweep_systems(cfg)}
    expected |= {("distilled_T20", "gap_closed_pct")}
    for t in ("omit3", "only78"):
        metrics = ["test_errors", "test_errors_on_3"] if t == "omit3" else ["test_error_pct"]
        expected |= {(f"{t}_{v}", m) for v in ("raw", "bias_val", "bias_paper") for m in metrics}
        expected |= {(f"{t}_bias_val", "bias_shift")}
    assert set(zip(summary.system, summary.metric)) == expected
    assert (summary.n_seeds == len(cfg["seeds"])).all()
    assert summary.loc[summary.system == "teacher", "paper"].item() == 67
    assert "Ours [95% interval]" in (smoke_run / "mnist.md").read_text()


def test_every_cell_traces_to_run_records(smoke_run):
    work = smoke_run.parents[1]
    prov = pd.read_csv(smoke_run / "provenance.csv")
    summary = pd.read_csv(smoke_run / "summary.csv")
    for _, row in summary.iterrows():
        vals = prov[(prov.section == row.section) & (prov.table == row.table) & (prov.system == row.system)
                    & (prov.metric == row.metric)]
        assert len(vals) == row.n_seeds
        if row.metric not in SHARE_METRICS:  # a share's mean is the ratio of seed means, not the mean of its seeds'
            assert vals.value.mean() == pytest.approx(row["mean"], rel=1e-4, nan_ok=True)
        for src, sha in zip(vals.source, vals.source_sha256):
            assert (work / src).exists(), src
            assert run_identity(work / src) == sha, src  # what `kdbench check` compares


def test_reports_figures_and_job_benchmarks_exist(smoke_run):
    text = (smoke_run / "mnist.md").read_text()
    assert "| Teacher 784-64-64-10" in text and "T=2.5" in text
    for png in ("mnist_sweep.png", "mnist_transfer.png"):
        assert (smoke_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (smoke_run / "benchmarks" / "train" / "teacher.tsv").exists()
    assert (smoke_run / "benchmarks" / "train" / "variants" / "speech_soft3" / "fitnets.tsv").exists()
    written = json.loads((smoke_run / "runs" / "variants" / "mnist_w30_bestT" / "fitnets" / "config.json").read_text())
    assert written["config"]["variant"] == "fitnets" and written["config"]["model"] == "mlp"  # resolved, beside it


EXPERIMENTS = {"mnist_distilled_T20", "mnist_w30_bestT"} | {
    f"{ds}_{kind}" for ds in ROWS for kind in ("distilled_bestT", "soft3")}


def test_the_documented_example_variant_gets_its_row_in_every_distillation_experiment(smoke_run):
    df = pd.read_csv(smoke_run / "variants.csv")
    cfg = yaml.safe_load(SMOKE.read_text())
    assert set(df.variant) == set(cfg["variants"]) | {"js_kd"}
    assert set(df.experiment) == EXPERIMENTS
    for variant in ("js_kd", "fitnets"):
        rows = df[df.variant == variant]
        assert len(rows) == len(EXPERIMENTS) and rows["mean"].notna().all()
        # each experiment on its section's seeds: the MNIST students on the profile's, the others on the ensembles'
        assert (rows.n_seeds == [2 if e.startswith("mnist_") else 3 for e in rows.experiment]).all()
        assert rows["diff_vs_hinton_mean"].notna().all() and rows["diff_ci95_low"].notna().all()
    md = (smoke_run / "variants.md").read_text()
    assert md.count("| js_kd |") == 3 and md.count("| fitnets |") == 3  # MNIST, Table 1 and Table 5 groups
    # a single-teacher geometric mean is hinton itself: same seeds, same numbers (MNIST and the Table 5 nets);
    # the Table 1 students learn from 3 members, where the means differ
    geo = df[df.variant == "hinton_geometric"].set_index("experiment")["mean"]
    ref = df[df.variant == "hinton"].set_index("experiment")["mean"]
    single = [e for e in EXPERIMENTS if not e.endswith("distilled_bestT")]
    assert (geo[single] == ref[single]).all()
    # fitnets learned its hint: the hint term fell from the first epoch to the last on every run that has two
    for e in ("mnist_distilled_T20", "speech_soft3"):
        rec = json.loads((smoke_run / "runs" / "variants" / e / "fitnets" / "seed0" / "metrics.json").read_text())
        assert {"hard", "soft", "hint"} <= set(rec["train_terms"][0])
    rec = json.loads((smoke_run / "runs" / "variants" / "speech_soft3" / "fitnets" / "seed1" / "metrics.json")
                     .read_text())
    assert rec["train_terms"][-1]["hint"] < rec["train_terms"][0]["hint"]
    assert rec["config"]["teacher_members"] == [0, 3, 6]  # seed 1's 100%-data net is member 0 of its ensemble
    # the bestT experiment ran at the temperature chosen on validation
    choice = json.loads((smoke_run / "variants" / "mnist_w30_bestT_temperature.json").read_text())
    hinton = df[(df.variant == "hinton") & (df.experiment == "mnist_w30_bestT")]
    assert hinton.temperature.item() == choice["temperature"]


def test_ensembles_section_rows_tables_and_figure(smoke_run):
    cfg = yaml.safe_load(SMOKE.read_text())
    s = pd.read_csv(smoke_run / "summary.csv")
    s = s[~s.section.isin(["mnist", "specialists"])]
    assert set(s.section) == set(ROWS)
    for ds in ROWS:
        rows = s[s.section == ds]
        t1 = set(rows[rows.table == "table1"].system)
        assert t1 == {"baseline", "ensemble_arithmetic", "ensemble_geometric", "distilled"}
        # the paper-protocol rows, and the smoke profile's mixup pair in rows of its own
        assert set(rows[rows.table == "table5"].system) == {"baseline_100", "baseline_3", "soft_3",
                                                             "baseline_3_mixup", "soft_3_mixup"}
        assert ("utterance_error_pct" in set(rows.metric)) == ds.startswith("speech")
        base = rows[(rows.system == "baseline") & (rows.metric == "test_accuracy_pct")].iloc[0]
        assert base.n_seeds == len(cfg["ensembles"]["seeds"]) * cfg["ensembles"]["members"]
        assert (rows[rows.system != "baseline"].n_seeds == len(cfg["ensembles"]["seeds"])).all()  # its own seeds
        assert 0 < base["mean"] <= 100
        t = rows[rows.metric == "chosen_temperature"]["mean"].item()
        assert t in cfg["ensembles"]["distilled"]["temperatures"]
    distilled = s[(s.section == "speech") & (s.system == "distilled") & (s.metric == "test_accuracy_pct")]
    assert distilled.paper.item() == 60.8
    # the narrow row reads the documented split and stands beside the paper's speech numbers too
    narrow = s[(s.section == "speech_narrow") & (s.system == "ensemble_arithmetic")]
    assert narrow[narrow.metric == "gain_over_members_pct"].paper.item() == 2.2
    assert (narrow.set_index("metric").loc["gain_over_members_pct", ["ci95_low", "ci95_high"]].notna()).all()
    n_narrow = len(torch.load(smoke_run / "runs" / "ensembles" / "speech_narrow" / "ensemble" / "logits.pt",
                              weights_only=False)["test_labels"])
    n_speech = len(torch.load(smoke_run / "runs" / "ensembles" / "speech" / "ensemble" / "logits.pt",
                              weights_only=False)["test_labels"])
    assert n_narrow == n_speech
    md = (smoke_run / "ensembles.md").read_text()
    assert "| 3x ensemble, geometric mean |" in md and "Utterance error %" in md and "## Fashion-MNIST" in md
    assert (smoke_run / "ensembles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the distilled nets learned from their own seed's ensemble: grouped teachers, one group per seed
    rec = json.loads((smoke_run / "runs" / "ensembles" / "speech" / "distilled_T2" / "seed1" / "metrics.json")
                     .read_text())
    assert rec["config"]["teacher_pairing"] == "grouped"


def test_specialists_section_one_job_per_cluster_and_both_tables(smoke_run):
    cfg = yaml.safe_load(SMOKE.read_text())
    s = pd.read_csv(smoke_run / "summary.csv")
    s = s[s.section == "specialists"]
    for ds in cfg["specialists"]["datasets"]:
        clusters = json.loads((smoke_run / "runs" / "specialists" / ds / "clusters.json").read_text())["clusters"]
        assert clusters and all(2 <= len(c) for c in clusters)
        for i, classes in enumerate(clusters):
            rec = json.loads((smoke_run / "runs" / "specialists" / ds / f"spec{i}" / "seed0" / "metrics.json")
                             .read_text())
            assert rec["config"]["class_subset"] == classes and rec["config"]["widths"][-1] == len(classes) + 1
            assert rec["config"]["init_from"].endswith(f"specialists/{ds}/generalist/model.pt")
            assert rec["config"]["init_members"] == list(range(len(cfg["specialists"]["seeds"])))
            soft = (cfg["specialists"]["datasets"][ds] or {}).get("soft_targets")
            assert rec["config"]["variant"] == ("hinton" if soft else "hard")
            if soft:  # section 6.1: seed s learned from generalist s's cached logits too
                assert rec["config"]["teacher_logits"].endswith(f"specialists/{ds}/generalist/train_logits.pt")
                assert rec["config"]["teacher_pairing"] == "paired" and rec["train_terms"][0]["soft"] > 0
        t3 = s[(s.table == "table3") & s.system.str.startswith(f"{ds}/")]
        assert set(t3.system) == {f"{ds}/generalist", f"{ds}/with_specialists"}
        assert (t3.n_seeds == len(cfg["specialists"]["seeds"])).all()  # the section's own seeds
        own = (cfg["specialists"]["datasets"][ds] or {}).get("generalist", {})
        gen = json.loads((smoke_run / "runs" / "specialists" / ds / "generalist" / "config.json").read_text())["config"]
        assert all(gen[k] == v for k, v in own.items())
        t4 = s[(s.table == "table4") & s.system.str.startswith(f"{ds}/covered_by_")]
        import torch
        n_test = len(torch.load(smoke_run / "runs" / "specialists" / ds / "generalist" / "logits.pt",
                                weights_only=False)["test_labels"])
        assert t4[t4.metric == "cases"]["mean"].sum() == n_test  # every test case in exactly one coverage row
    md = (smoke_run / "specialists.md").read_text()
    assert "### Table 4 analog" in md and "Sandal" in md
    assert (smoke_run / "specialists.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_workflow_has_nothing_left_to_do(smoke_run, all_data_root):
    r = snakemake(smoke_run.parents[1], "-n", data_root=all_data_root, configfile=smoke_run.parents[1] / "config.yaml")
    assert r.returncode == 0 and "Nothing to be done" in (r.stdout + r.stderr)


def test_a_changed_specialist_recipe_reruns_the_specialists(smoke_run, all_data_root, tmp_path):
    """Specialist jobs come after a checkpoint; a new recipe must still rerun them (and nothing upstream)."""
    work = smoke_run.parents[1]
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["specialists"]["train"]["epochs"] += 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    r = snakemake(work, "-n", data_root=all_data_root, configfile=changed)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "train_specialist" in out, out[-2000:]
    training = "train|train_members|train_ensembles|train_generalists|teacher_logits|ensemble_teacher_logits"
    assert not re.search(rf"rule ({training}):", out)


def _set(path, value):
    def mutate(cfg):
        *parents, last = path
        for p in parents:
            cfg = cfg[p]
        cfg[last] = value
    return mutate


@pytest.mark.parametrize("mutate, message", [
    (_set(["mnist", "epochz"], 3), r"epochz"),
    (_set(["seeds"], [0, 0]), r"non-unique|unique"),
    (_set(["mnist", "teacher", "lr"], -1.0), r"lr|-1\.0"),
    (_set(["mnist", "distilled", "variant_params", "temprature"], 4.0), r"temprature"),
    (_set(["mnist", "distilled", "variant"], "hintn"), r"unknown KD variant 'hintn'"),
    (_set(["variant_params"], {"soft_onyl": {"temperature": 4.0}}), r"variant_params: 'soft_onyl' is not one of"),
    (_set(["variant_params"], {"hard": {"temperature": 4.0}}), r"variant 'hard' has no parameter.*temperature"),
    (_set(["variant_params"], {"fitnets": {"hint_weight": "big"}}), r"fitnets.*hint_weight must be a finite number"),
    (_set(["variant_params"], {"born_again": {"temperature": -4.0}}), r"born_again.*temperature must be a number > 0"),
    (_set(["mnist", "distilled", "variant_params", "temperature"], -20.0),
     r"job 'distilled_T20'.*temperature must be a number > 0, got -20"),
    (_set(["mnist", "distilled", "variant_params", "temperature"], 0), r"temperature must be a number > 0, got 0"),
    (_set(["mnist", "distilled", "variant_params", "hard_weight"], 2), r"hard_weight must be a number in \[0, 1\]"),
    (_set(["mnist", "teacher", "widths"], [784, 64, 64, 11]), r"job 'teacher'.*widths .* do not fit mnist"),
    (_set(["ensembles", "datasets", "speech", "val_size"], 5000), r"val_size 5000 leaves no training data.*2700"),
    (_set(["mnist", "sweep", "train", "jitter"], 30), r"jitter"),
])
def test_bad_config_stops_before_any_job(tmp_path, mutate, message):
    bad = yaml.safe_load(SMOKE.read_text())
    mutate(bad)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    r = snakemake(tmp_path / "w", data_root=tmp_path / "no-data", configfile=cfg)
    assert r.returncode != 0
    assert re.search(message, r.stdout + r.stderr), (r.stdout + r.stderr)[-2000:]
    assert not (tmp_path / "w" / "results").exists() and not (tmp_path / "no-data").exists()


def test_the_schemas_training_keys_are_made_from_the_engines_keys(monkeypatch):
    """Each training key's type and range is stated once (kdbench.spec.KEYS, which kdbench.engine.config names too):
    the profile's schema takes it from there, so the engine and the profile cannot disagree; a key the sections set
    is no profile's."""
    from kdbench import profile
    from kdbench.engine import config
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    # `data` is the file's one own key: an ensembles row names the dataset it reads, and strips the key before its
    # jobs' configs are made (kdbench.sections.ensembles.train_config); anywhere else the engine refuses it
    assert set(schema["$defs"]["train"]["properties"]) == {"data"} and "data" not in config.DEFAULTS
    made = profile._schema()["$defs"]["train"]["properties"]
    assert set(made) == {k for k, key in config.KEYS.items() if key.profile} | {"data"}
    assert "teacher_logits" not in made and made["epochs"]["minimum"] == 1
    # a changed range reaches the profile's check without touching the schema file
    monkeypatch.setitem(config.KEYS, "epochs", dataclasses.replace(config.KEYS["epochs"],
                                                                    schema={"type": "integer", "minimum": 5}))
    assert profile._schema()["$defs"]["train"]["properties"]["epochs"]["minimum"] == 5


def test_a_profile_is_held_tighter_than_the_engine_only_where_a_key_says_so():
    from kdbench import profile
    from kdbench.engine import config
    assert config.good("val_size", 0)  # the engine: 0 trains on everything
    cfg = profile.load(SMOKE)
    cfg["mnist"]["baseline"]["val_size"] = 0  # a profile's sections choose on validation
    with pytest.raises(profile.ProfileError, match=r"mnist.*baseline.*val_size"):
        profile.validate(cfg)
    cfg["mnist"]["baseline"]["val_size"] = 100
    cfg["mnist"]["baseline"]["epochs"] = 0
    with pytest.raises(profile.ProfileError, match=r"mnist.*baseline.*epochs"):
        profile.validate(cfg)


def _processes_in(workdir: Path) -> list[int]:
    """Pids of the processes whose working directory is workdir (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and Path(os.readlink(d / "cwd")) == workdir:
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")
def test_a_killed_workflow_leaves_no_orphan_and_resumes_to_the_uninterrupted_numbers(tmp_path, mnist_root):
    """kill -9 of snakemake while the teacher trains: its training job dies with it; after `--unlock` the plain
    command (the default profile's rerun-incomplete) finishes the job from its checkpoint with the same numbers."""
    import signal
    import time
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["mnist"]["teacher"]["epochs"] = 30
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    target = "results/smoke/runs/teacher/model.pt"
    straight = snakemake(tmp_path / "straight", target, data_root=mnist_root, configfile=configfile)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert "Using workflow specific profile profiles/default" in straight.stdout + straight.stderr

    work = tmp_path / "killed"
    work.mkdir()
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
           str(configfile), "--config", f"data_root={mnist_root}", "--cores", "2", target]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = work / "results" / "smoke" / "runs" / "teacher" / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "the teacher never wrote a checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for _ in range(100):  # the training job gets SIGTERM from the kernel when its parent dies
        if not _processes_in(work):
            break
        time.sleep(0.1)
    assert not _processes_in(work), "a training job outlived its killed snakemake"
    assert not (work / target).exists()

    again = snakemake(work, target, data_root=mnist_root, configfile=configfile)
    assert again.returncode != 0 and "LockException" in again.stdout + again.stderr  # the documented state
    assert snakemake(work, "--unlock", target, data_root=mnist_root, configfile=configfile).returncode == 0
    resumed = snakemake(work, target, data_root=mnist_root, configfile=configfile)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (work / "results" / "smoke" / "logs" / "train" / "teacher.log").read_text()
    assert "resuming after epoch" in log
    for seed in cfg["seeds"]:
        a, b = (json.loads((w / "results" / "smoke" / "runs" / "teacher" / f"seed{seed}" / "metrics.json").read_text())
                for w in (tmp_path / "straight", work))
        assert b["resumed_after_epoch"] > 0 and a["resumed_after_epoch"] == 0
        for key in ("train_loss", "val_errors", "test_errors", "test_per_class_errors"):
            assert a[key] == b[key], key


def test_unlock_beside_a_live_run_stops_the_second_run_and_ctrl_c_stops_the_first_in_one_line(tmp_path,
                                                                                                  mnist_root):
    """Issue 25 items 8 and 9: `--unlock` while a run trains, then the same command again: the second run stops at once,
    naming the live run's pid, and the first trains on. Ctrl-C (SIGINT to the run's process group, as a terminal sends
    it) then stops the first: its training job says so in one line, with no traceback and no half-written file."""
    import signal
    import time
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["mnist"]["teacher"]["epochs"] = 5000  # still training when it is stopped, on a fast CPU too
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    target = "results/smoke/runs/teacher/model.pt"
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--configfile",
           str(configfile), "--config", f"data_root={mnist_root}", "--cores", "2", target]
    first_out = (tmp_path / "first.log").open("w")
    # Ctrl-C's default action in the run, even where pytest itself was started in the background (a shell's
    # background job inherits SIGINT ignored, and Python then keeps ignoring it)
    first = subprocess.Popen(cmd, cwd=REPO, stdout=first_out, stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        ckpt = work / "results" / "smoke" / "runs" / "teacher" / "checkpoint.pt"
        deadline = time.time() + 300
        while not ckpt.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), "the teacher never wrote a checkpoint"
        assert snakemake(work, "--unlock", target, data_root=mnist_root, configfile=configfile).returncode == 0
        second = snakemake(work, target, data_root=mnist_root, configfile=configfile)
        out = second.stdout + second.stderr
        assert second.returncode != 0 and f"another workflow run (pid {first.pid}," in out, out[-2000:]
        assert "snakemake --unlock` only removes snakemake's lock" in out and "Traceback" not in out
        assert first.poll() is None, "the live run died when a second one was started beside it"
    finally:
        os.killpg(first.pid, signal.SIGINT)
        try:
            first.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            pytest.fail("the run did not stop within 300 s of Ctrl-C: "
                        + (tmp_path / "first.log").read_text()[-3000:])
        first_out.close()
    log = (work / "results" / "smoke" / "logs" / "train" / "teacher.log").read_text()
    assert "kdbench train: interrupted (Ctrl-C)" in log and "Traceback" not in log, log[-2000:]
    assert not list(work.rglob("*.tmp")) and not (work / target).exists()


def test_the_mnist_section_target_needs_mnist_alone(tmp_path):
    """What runs where only the package index is reachable: the target plans MNIST jobs and nothing that reads
    Fashion-MNIST or the spoken digits."""
    r = snakemake(tmp_path / "w", "mnist_section", "-n", data_root=tmp_path / "no-data")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]
    planned = set(re.findall(r"^rule (\w+):", out, re.M))
    assert {"fetch_mnist", "train", "teacher_logits", "aggregate_mnist", "aggregate_variants_mnist"} <= planned
    assert not planned & {"fetch_fashion_mnist", "fetch_speech", "fetch_speech_unseen", "train_members",
                          "train_ensembles", "train_specialist"}, planned


def _planned_after(smoke_run, all_data_root, tmp_path, mutate) -> set[str]:
    """The rules a dry run plans on the finished smoke run once `mutate` has changed its config."""
    work = smoke_run.parents[1]
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    mutate(cfg)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    r = snakemake(work, "-n", data_root=all_data_root, configfile=changed)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]
    rule_and_output = r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    output: ([^,\s]+)"
    return {(m.group(1), m.group(2)) for m in re.finditer(rule_and_output, out, re.M)} or {("nothing", "")}


def test_a_table_setting_reruns_only_the_table(smoke_run, all_data_root, tmp_path):
    """The paper's shift is reported beside ours: changing it redoes the bias correction and the MNIST tables only."""
    planned = _planned_after(smoke_run, all_data_root, tmp_path, _set(["mnist", "omit3", "paper_shift"], 3.0))
    assert {rule for rule, _ in planned} == {"bias_correction", "aggregate_mnist", "summary"}, planned


def test_a_variant_parameter_retrains_only_that_variants_students(smoke_run, all_data_root, tmp_path):
    planned = _planned_after(smoke_run, all_data_root, tmp_path,
                             _set(["variant_params"], {"fitnets": {"hint_weight": 0.5}}))
    trained = {out for rule, out in planned if rule.startswith("train")}
    assert len(trained) == len(EXPERIMENTS) and all("/fitnets/" in out for out in trained), planned
    # the MNIST students train on the profile's seeds (rule train), the ensembles' on that section's own
    assert {rule for rule, _ in planned} == {"train", "train_ensembles", "aggregate_variants"}, planned


def test_adding_a_variant_trains_only_its_students_in_every_distillation_experiment(smoke_run, all_data_root,
                                                                                      tmp_path):
    def add(cfg):
        cfg["variants"] = cfg["variants"] + ["soft_only"]
    planned = _planned_after(smoke_run, all_data_root, tmp_path, add)
    trained = {out for rule, out in planned if rule.startswith("train")}
    assert trained == {f"results/smoke/runs/variants/{e}/soft_only/model.pt" for e in EXPERIMENTS}, planned
    # the MNIST students train on the profile's seeds (rule train), the ensembles' on that section's own
    assert {rule for rule, _ in planned} == {"train", "train_ensembles", "aggregate_variants"}, planned


def test_a_second_variant_file_trains_only_its_students_and_editing_a_file_retrains_only_its_own(
        smoke_run, all_data_root, tmp_path):
    """Issue 24: with the smoke run's user file (my_variants.py: js_kd) trained, adding a second file plans exactly
    the second variant's students (one per distillation experiment) and the table; editing the first file retrains
    only js_kd's students."""
    work = smoke_run.parents[1]
    first, second = work / "my_variants.py", work / "second_variants.py"
    second.write_text(first.read_text().replace('"js_kd"', '"js_kd2"').replace("def js_kd(", "def js_kd2("))

    def add(cfg):
        cfg["variant_modules"] = cfg["variant_modules"] + ["second_variants.py"]
        cfg["variants"] = cfg["variants"] + ["js_kd2"]
    try:
        planned = _planned_after(smoke_run, all_data_root, tmp_path, add)
    finally:
        second.unlink()
    trained = {out for rule, out in planned if rule.startswith("train")}
    assert trained == {f"results/smoke/runs/variants/{e}/js_kd2/model.pt" for e in EXPERIMENTS}, planned
    assert {rule for rule, _ in planned} == {"train", "train_ensembles", "aggregate_variants"}, planned

    text, stat = first.read_text(), first.stat()
    first.write_text(text + "# a comment: the file changed\n")
    try:
        planned = _planned_after(smoke_run, all_data_root, tmp_path, lambda cfg: None)
    finally:
        first.write_text(text)
        os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    trained = {out for rule, out in planned if rule.startswith("train")}
    assert trained == {f"results/smoke/runs/variants/{e}/js_kd/model.pt" for e in EXPERIMENTS}, planned


def test_a_moved_checkout_reruns_nothing(tmp_path, mnist_root):
    """A checkout with its results, moved elsewhere (`mv`), plans nothing: no param holds an absolute path."""
    import shutil
    checkout = tmp_path / "a" / "kdbench"
    checkout.mkdir(parents=True)
    for item in ("Snakefile", "workflow", "config", "profiles", ".test"):
        copy = shutil.copytree if (REPO / item).is_dir() else shutil.copy2
        copy(REPO / item, checkout / item)
    cmd = [sys.executable, "-m", "snakemake", "--configfile", ".test/config.yaml",
           "--config", f"data_root={mnist_root}"]
    done = subprocess.run(cmd + ["--cores", "2", "mnist_section"], cwd=checkout, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    moved = tmp_path / "b" / "elsewhere"
    moved.parent.mkdir()
    shutil.move(checkout, moved)
    r = subprocess.run(cmd + ["-n", "mnist_section"], cwd=moved, capture_output=True, text=True)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]


def test_a_changed_recipe_retrains_its_jobs(smoke_run, all_data_root, tmp_path):
    """Every training job's config is a recorded param: a new teacher lr retrains the teacher (and what learns from
    it), a new ensemble-student recipe retrains those students; before, such a change kept the old runs silently."""
    planned = _planned_after(smoke_run, all_data_root, tmp_path, _set(["mnist", "teacher", "lr"], 0.04))
    assert ("train", "results/smoke/runs/teacher/model.pt") in planned, planned
    planned = _planned_after(smoke_run, all_data_root, tmp_path,
                             _set(["ensembles", "distilled", "train", "grad_clip"], 4.0))
    trained = {out for rule, out in planned if rule == "train_ensembles"}  # the section's own seeds
    assert not {out for rule, out in planned if rule == "train"}, planned
    # the ensembles' distilled nets, and every variant's student of the Table 1 experiments (same recipe)
    assert trained and all("/distilled_T" in out or "_distilled_bestT/" in out for out in trained), planned
    assert any("/distilled_T" in out for out in trained) and any("_distilled_bestT/" in out for out in trained)
    assert "train_members" not in {rule for rule, _ in planned}, planned
    # the born-again teachers of those experiments are their `hard` runs, which follow the recipe too
    assert {out for rule, out in planned if rule == "teacher_logits"} == {
        f"results/smoke/runs/variants/{ds}_distilled_bestT/hard/train_logits.pt"
        for ds in ROWS}, planned
    assert not any("soft3" in out or "/variants/mnist_" in out for out in trained), planned


@pytest.mark.parametrize("deleted, job", [
    ("runs/baseline", "baseline"),                                           # a whole run folder (MNIST)
    ("runs/baseline/seed1/metrics.json", "baseline"),                        # one record (MNIST, issue 35)
    ("runs/ensembles/speech/base3/seed1/metrics.json", "ensembles/speech/base3"),  # one record (ensembles)
    ("runs/specialists/speech/generalist", "specialists/speech/generalist"),  # the specialists' generalist
])
def test_a_deleted_run_is_planned_again_with_what_reads_it(smoke_run, all_data_root, tmp_path, deleted, job):
    """Issue 25: deleting a run folder or one metrics.json makes a dry run plan that job again (and the rules that
    read it), never "Nothing to be done" while a table still cites the missing record."""
    import shutil
    work = tmp_path / "copy"
    shutil.copytree(smoke_run.parents[1], work, symlinks=True)  # keeps mtimes: the copy is as finished as the run
    target = work / "results" / "smoke" / deleted
    assert target.exists(), target
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    r = snakemake(work, "-n", data_root=all_data_root, configfile=work / "config.yaml")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Nothing to be done" not in out, out[-2000:]
    trained = set(re.findall(r"^\s+wildcards: job=(\S+)", out, re.M))
    assert job in trained, out[-3000:]


def test_report_on_results_made_elsewhere_says_so_in_one_line(smoke_run, all_data_root, tmp_path):
    """Issue 25: `kdbench report` on results made in another checkout (a fresh clone's committed results) prints
    one line about their missing snakemake metadata, not one warning per file."""
    import shutil
    copy = tmp_path / "clone"
    shutil.copytree(smoke_run.parents[1], copy, ignore=shutil.ignore_patterns(".snakemake"))
    r = subprocess.run([sys.executable, "-m", "kdbench.cli", "report", "--configfile", str(copy / "config.yaml"),
                        "--out", str(tmp_path / "report.html"), "--", "-s", str(REPO / "Snakefile"), "-d", str(copy),
                        "--config", f"data_root={all_data_root}"], capture_output=True, text=True, cwd=REPO)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and (tmp_path / "report.html").stat().st_size > 10_000, out[-3000:]
    assert "Missing metadata" not in out
    assert len(re.findall(r"^kdbench report: \d+ result files have no snakemake metadata", out, re.M)) == 1, out


def test_a_fresh_clone_hears_the_same_plan_and_estimate_from_kdbench_plan_and_a_dry_run(smoke_run, all_data_root,
                                                                                          tmp_path):
    """Issue 39: in a checkout with the committed records but no `*.pt` (a fresh clone), `kdbench plan` and
    `snakemake -n` count the same training jobs, every one of them (rule `all` asks for every planned job's weights),
    give the same estimate, and say that they retrain runs whose records are committed."""
    import shutil
    copy = tmp_path / "clone"
    shutil.copytree(smoke_run.parents[1], copy, ignore=shutil.ignore_patterns(".snakemake", "*.pt"))
    plan = subprocess.run([sys.executable, "-m", "kdbench.cli", "plan", "config.yaml"], cwd=copy,
                          capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr[-2000:]
    dry = snakemake(copy, "-n", data_root=all_data_root, configfile=copy / "config.yaml")
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-2000:]
    said = re.findall(r"^kdbench: (\d+) training jobs? of profile 'smoke' to run; (.*)$", plan.stdout, re.M)
    heard = re.findall(r"^kdbench: dry run: (\d+) training jobs? of profile 'smoke' to run; (.*)$", dry.stderr, re.M)
    assert said and said == heard, (plan.stdout[-1500:], dry.stderr[-1500:])
    planned = int(re.search(r"^(\d+) training jobs \(plus the specialists", plan.stdout, re.M).group(1))
    assert int(said[0][0]) == planned  # no weights anywhere: every planned job trains again
    trained = set(re.findall(r"^\s+wildcards: job=(\S+)", dry.stdout + dry.stderr, re.M))
    assert len(trained) == planned, sorted(trained)
    again = re.search(r"^kdbench: (\d+) of them retrain runs whose records are committed", plan.stdout, re.M)
    assert again and int(again.group(1)) == planned, plan.stdout[-1500:]
    assert f"kdbench: {again.group(1)} of them retrain runs whose records are committed" in dry.stderr


def test_one_variant_in_a_fresh_clone_trains_its_students_and_what_they_need_listed_with_times(
        smoke_run, all_data_root, tmp_path):
    """Issue 39: a new variant (`js_kd`, not run yet) in a checkout without `*.pt`, a fresh clone: `snakemake
    variant_js_kd`'s dry run plans its students in every experiment and their prerequisites (the MNIST teacher, the
    ensembles), no other variant's students and no table, and lists the jobs with their time."""
    import shutil
    copy = tmp_path / "clone"
    shutil.copytree(smoke_run.parents[1], copy, ignore=shutil.ignore_patterns(".snakemake", "*.pt"))
    for run in (copy / "results" / "smoke" / "runs" / "variants").glob("*/js_kd"):
        shutil.rmtree(run)
    dry = snakemake(copy, "-n", "variant_js_kd", data_root=all_data_root, configfile=copy / "config.yaml")
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-2000:]
    trained = set(re.findall(r"^\s+wildcards: job=(\S+)", dry.stdout + dry.stderr, re.M))
    students = {f"variants/{e}/js_kd" for e in EXPERIMENTS}
    assert students <= trained, sorted(trained)
    assert not {j for j in trained if j.startswith("variants/")} - students, sorted(trained)
    assert "teacher" in trained and any(j.startswith("ensembles/") for j in trained), sorted(trained)
    assert not re.search(r"^rule aggregate", dry.stdout + dry.stderr, re.M)
    first = re.search(r"^kdbench: first, what the variants' students need: (.*)$", dry.stderr, re.M)
    then = re.search(r"^kdbench: then the variants' students: (.*)$", dry.stderr, re.M)
    assert first and then, dry.stderr[-2000:]
    listed = r"(\S+) \((?:about [\d.]+ (?:min|h)|under 1 min|no estimate)\)"
    assert set(re.findall(listed, then.group(1))) == students, then.group(1)
    assert set(re.findall(listed, first.group(1))) == trained - students, first.group(1)


def test_a_dry_run_with_a_mirror_that_lacks_the_data_says_so_with_a_fix(tmp_path):
    """Issue 39: a dry run whose data is not there yet names the datasets it would fetch, and where KDBENCH_MIRROR
    points at a folder without them, says that the fetch would fall back to a download, and how to fix it."""
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"),
           "--configfile", str(SMOKE), "--config", f"data_root={tmp_path / 'no-data'}", "--cores", "2", "-n",
           "mnist_section"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "KDBENCH_MIRROR": str(empty)})
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    fetched = f"kdbench: dry run: not under {tmp_path / 'no-data'} yet, so fetched first: mnist"
    assert fetched in r.stderr, r.stderr[-2000:]
    assert (f"kdbench: mnist: KDBENCH_MIRROR={empty} holds no MNIST/, so its fetch falls back to a download, which "
            f"fails without internet. Fix: point KDBENCH_MIRROR at a folder holding MNIST/") in r.stderr
    assert "fashion_mnist" not in r.stderr.split("fetched first:")[1].splitlines()[0]  # the target needs MNIST alone


def test_a_row_without_logits_keeps_its_committed_rows_and_only_those(smoke_run, all_data_root, tmp_path,
                                                                      monkeypatch):
    """A profile regenerated in pieces from fresh clones (issues 37, 39): git keeps no logits, so a piece that
    retrains one ensembles row must write the section's tables with the other rows as committed. With the tables
    committed, a row whose logits are absent keeps its rows byte for byte; a row whose runs were retrained after its
    rows were made is refused; and `kdbench check`'s re-derivation (no keep_committed) still finds the logits
    missing."""
    from kdbench import profile
    from kdbench.rederive import as_the_rules_pass_it
    from kdbench.report import aggregate
    from kdbench.sections import ensembles

    clone = tmp_path / "clone"
    shutil.copytree(smoke_run, clone / "results" / "smoke", ignore=shutil.ignore_patterns("logs", "benchmarks"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(clone)]
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "the smoke run"], check=True)
    monkeypatch.chdir(clone)
    cfg = as_the_rules_pass_it(profile.load(smoke_run.parent.parent / "config.yaml"))
    paper = aggregate.load_paper(REPO / "config" / "paper_numbers.yaml")
    out, runs = Path("results/smoke"), Path("results/smoke/runs")
    files = ["ensembles_summary.csv", "ensembles_provenance.csv", ensembles.FACTS, "ensembles.md"]
    committed = {f: (out / f).read_bytes() for f in files}

    def write(**kw):
        return ensembles.write(cfg, runs, out, paper, root=all_data_root, figures=False, **kw)

    write()  # every row from its logits: what the workflow wrote
    assert {f: (out / f).read_bytes() for f in files} == committed
    row = "fashion_mnist"
    for p in (runs / "ensembles" / row).rglob("logits.pt"):
        p.unlink()
    assert not ensembles.has_logits(cfg, runs, row) and ensembles.has_logits(cfg, runs, "speech")
    for f in files:  # the workflow clears a rule's outputs before it runs it: the rows come from the commit
        (out / f).unlink()
    assert "fashion_mnist kept as committed" in write(keep_committed=True)
    assert {f: (out / f).read_bytes() for f in files} == committed
    with pytest.raises(FileNotFoundError, match="logits"):
        write()
    record = runs / "ensembles" / row / "base3" / "seed0" / "metrics.json"
    record.write_text(record.read_text() + " ")  # the run retrained since its rows were made
    with pytest.raises(ValueError, match=f"{row}.*retrained since"):
        write(keep_committed=True)


def test_the_jobs_run_the_package_of_the_checkout_whose_snakefile_plans_them(tmp_path, mirror):
    """A second clone's workflow, run with kdbench installed from another checkout (as CI and a developer's
    `pip install -e .` have it): its jobs' `kdbench` commands import the clone's own package, so they train with
    the code that planned them and stamp its commit on their records (a piece of the quick profile once trained
    with another checkout's package)."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for part in ("Snakefile", "kdbench", "workflow", "config", ".test"):
        src = REPO / part
        (shutil.copytree(src, clone / part, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, clone / part))
    mark = tmp_path / "imported.txt"
    with (clone / "kdbench" / "__init__.py").open("a") as f:
        f.write("\nimport os as _o, sys as _s\nif _o.environ.get('KDBENCH_MARK'):\n"
                "    open(_o.environ['KDBENCH_MARK'], 'a').write(f'{__file__} {\" \".join(_s.argv[1:3])}\\n')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(clone / "Snakefile"), "-d", str(tmp_path / "w"),
                        "--configfile", str(clone / ".test" / "config.yaml"), "--config",
                        f"data_root={tmp_path / 'data'}", "--cores", "1", "fetch_mnist"],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "KDBENCH_MIRROR": str(mirror), "KDBENCH_MARK": str(mark)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    imports = mark.read_text().splitlines()
    jobs = [line for line in imports if line.endswith("data fetch")]
    assert jobs, imports  # the fetch job imported the clone's package (the marker is the clone's alone)
    assert all(line.startswith(str(clone / "kdbench")) for line in imports), imports
