"""`kdbench check` finds every way a committed result can stop being what the current plan trains."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_helpers import REPO, SMOKE

from kdbench import check, layout, plan
from kdbench.engine import config
from kdbench.report import aggregate
from kdbench.sections import variants

HEAD = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A copy of a smoke profile's results made as the workflow would: two planned jobs' records, a section's
    provenance citing them (and a `logits.pt` of one, which git does not keep and is absent here), a variants table
    citing both, a benchmark file of the training rule; tables written by the suite's own writers; clean."""
    if len(HEAD) != 40:
        pytest.skip("not a git checkout")
    monkeypatch.chdir(tmp_path)  # the workflow aggregates from the repository root: sources are relative to it
    cfg = yaml.safe_load(SMOKE.read_text())
    jobs = plan.jobs(cfg)
    runs = layout.runs(cfg["profile"])
    cell = aggregate.Cell("mnist", "sec3", "teacher", "test_errors", "count")
    for name in ("teacher", "baseline"):
        for seed in cfg["seeds"]:
            path = layout.metrics(runs, name, seed)
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"config": config.resolve(jobs[name].config), "git_commit": HEAD,
                                        "test_errors": 100, "test_accuracy": 0.99}))
            cell.values.append((seed, 100, str(path)))
    ensemble = aggregate.Cell("mnist", "sec3", "teacher_logits", "test_errors", "count",
                              [(s, 100, str(runs / "teacher" / "logits.pt")) for s in cfg["seeds"]])
    res = Path(layout.results(cfg["profile"]))
    aggregate.write_tables([cell, ensemble], {}, res, "mnist")
    spec = {"variants": ["hinton", "hard"], "experiments": [{"name": "e", "table": "mnist", "metric": "test_errors",
                                                  "seeds": cfg["seeds"], "jobs": {"hinton": "teacher",
                                                                                  "hard": "baseline"}}]}
    aggregate.write_csv(variants.table(spec, runs), res / "variants.csv")
    (res / "benchmarks" / "train").mkdir(parents=True)
    (res / "benchmarks" / "train" / "teacher.tsv").write_text("s\n1\n")
    return cfg, tmp_path


def _record(root, cfg, job="teacher", seed=0):
    return root / layout.metrics(layout.runs(cfg["profile"]), job, seed)


def _edit(path, **changes):
    rec = json.loads(path.read_text())
    rec.update(changes)
    path.write_text(json.dumps(rec))


def test_clean_results_pass(results):
    cfg, root = results
    assert check.problems(cfg, root) == []



def test_files_of_a_rule_the_workflow_lacks_fail_and_the_training_rules_folder_is_known(results):
    """The training rule is made in a loop (train.smk), one per seed list, and logs under plan.TRAIN_RULE: its folder
    is the workflow's, a folder of no rule is named."""
    cfg, root = results
    results_dir = root / "results" / cfg["profile"]
    assert (results_dir / "benchmarks" / plan.TRAIN_RULE).is_dir()
    assert plan.TRAIN_RULE in check.workflow_rules() and "teacher_logits" in check.workflow_rules()
    (results_dir / "logs" / "train_old").mkdir(parents=True)
    found = check.problems(cfg, root)
    assert found == [f"results/{cfg['profile']}/logs/train_old/: files of rule 'train_old', which the workflow no "
                     f"longer has"], found

def test_an_edited_run_config_fails(results):
    cfg, root = results
    path = _record(root, cfg)
    rec = json.loads(path.read_text())
    _edit(path, config={**rec["config"], "lr": 0.5})
    found = check.problems(cfg, root)
    assert any("teacher/seed0/metrics.json: its config is not the plan's" in p and "lr" in p for p in found), found


def test_a_record_with_a_key_no_spec_has_is_named_as_the_record_not_as_its_config_json(results):
    """A record whose config holds a key today's spec lacks is refused as that record's; the run's config.json,
    compared with it, is not blamed for the record's key."""
    cfg, root = results
    path = _record(root, cfg)
    rec = json.loads(path.read_text())
    (path.parent.parent / "config.json").write_text(json.dumps({"name": "teacher", "seeds": cfg["seeds"],
                                                                "config": rec["config"]}))
    assert not [p for p in check.problems(cfg, root) if "config" in p]  # config.json agrees with plan and records
    _edit(path, config={**rec["config"], "learning_rate": 0.5})
    found = check.problems(cfg, root)
    assert any(p.startswith(str(path.relative_to(root))) and "the recorded config has key(s) ['learning_rate']" in p
               for p in found), found
    assert any("config.json: its config is not the one" in p and "the record's config has key(s) ['learning_rate']"
               in p for p in found), found
    _edit(path, config={**rec["config"], "lr": 0.5})
    found = check.problems(cfg, root)
    assert any("config.json: its config is not the one" in p and "lr: config.json's 0.05, record's 0.5" in p
               for p in found), found


def test_a_dirty_record_fails(results):
    cfg, root = results
    _edit(_record(root, cfg, "baseline", 1), git_commit=HEAD + "-dirty")
    found = check.problems(cfg, root)
    assert any("baseline/seed1/metrics.json: made from a dirty tree" in p for p in found), found
    assert any("mnist_provenance.csv: cites" in p and "baseline/seed1/metrics.json, which is not a current run" in p
               for p in found), found
    assert any("variants.csv: cites" in p and "baseline/seed1/metrics.json, which is not a current run" in p
               for p in found), found
    _edit(_record(root, cfg, "teacher", 0), git_commit=HEAD + "-dirty")  # a cell from that run's logits.pt too
    found = check.problems(cfg, root)
    assert any("mnist_provenance.csv: cites" in p and "teacher/logits.pt, which is not a current run" in p
               for p in found), found


def test_an_unknown_commit_fails(results):
    cfg, root = results
    _edit(_record(root, cfg), git_commit="0123456789abcdef0123456789abcdef01234567")
    found = check.problems(cfg, root)
    assert any("not in this repository's history" in p for p in found), found


def test_an_orphan_file_fails(results):
    cfg, root = results
    orphan = root / layout.results(cfg["profile"]) / "benchmarks" / "train_mnist" / "teacher.tsv"
    orphan.parent.mkdir(parents=True)
    orphan.write_text("s\n1\n")
    found = check.problems(cfg, root)
    assert any("benchmarks/train_mnist/: files of rule 'train_mnist'" in p for p in found), found
    # a generated rule (one fetch rule per registered dataset) is a rule of the workflow; a retired one is not
    for name in ("fetch_speech", "speech_features"):
        (root / layout.results(cfg["profile"]) / "logs" / name).mkdir(parents=True)
    found = check.problems(cfg, root)
    assert any("logs/speech_features/: files of rule" in p for p in found), found
    assert not any("logs/fetch_speech/" in p for p in found), found
    stale = _record(root, cfg, "sweep_w999_T3")
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"config": {}, "git_commit": HEAD}))
    assert any("the plan has no job 'sweep_w999_T3'" in p for p in check.problems(cfg, root))


def test_a_table_built_from_a_replaced_run_fails(results):
    cfg, root = results
    _record(root, cfg, "baseline", 0).unlink()  # the run the table cites was deleted
    found = check.problems(cfg, root)
    assert any("mnist_provenance.csv: cites" in p and "baseline/seed0/metrics.json, which does not exist" in p
               for p in found), found
    assert any("variants.csv: cites" in p and "baseline/seed0/metrics.json, which does not exist" in p
               for p in found), found


def test_a_table_built_before_its_run_was_retrained_fails(results):
    """A retrained run keeps its path and its config; what changes is its record (wall time, numbers): the tables
    made from the old run no longer match it, the section's provenance and the variants table alike, and a cell
    computed from a run's logits.pt (not in git) is pinned by that run's records."""
    cfg, root = results
    _edit(_record(root, cfg, "teacher", 1), test_errors=101, wall_seconds=12.0)
    found = check.problems(cfg, root)
    assert any("mnist_provenance.csv: cites" in p and "teacher/seed1/metrics.json, which has changed" in p
               for p in found), found
    assert any("mnist_provenance.csv: cites" in p and "teacher/logits.pt, which has changed" in p
               for p in found), found
    assert any("variants.csv: cites" in p and "teacher/seed1/metrics.json, which has changed" in p
               for p in found), found
    assert not any("baseline" in p for p in found), found


def test_a_table_without_identities_fails(results):
    cfg, root = results
    prov = root / layout.results(cfg["profile"]) / "mnist_provenance.csv"
    df = pd.read_csv(prov)
    df.drop(columns="source_sha256").to_csv(prov, index=False)
    found = check.problems(cfg, root)
    assert any("mnist_provenance.csv: cites" in p and "without its identity" in p for p in found), found


def test_kdbench_check_exits_non_zero_naming_the_file(results):
    cfg, root = results
    _edit(_record(root, cfg), git_commit=HEAD + "-dirty")
    profile = root / "profile.yaml"
    profile.write_text(SMOKE.read_text())
    r = subprocess.run([sys.executable, "-m", "kdbench.cli", "check", "--configfile", str(profile)], cwd=root,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "teacher/seed0/metrics.json: made from a dirty tree" in r.stdout, r.stdout + r.stderr
