"""Issue 35: `kdbench check` re-derives what a reader sees. Each way a careful reader tampered with a copy of the
committed `results/quick` makes the check fail and name the file (and the cell, for a table); the untouched copy
has no problem."""
import contextlib
import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
from workflow_helpers import REPO

from kdbench import check, profile, rederive
from kdbench.report import aggregate

QUICK = REPO / "results" / "quick"


@pytest.fixture(scope="module")
def cfg():
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    return profile.load(REPO / "config" / "quick.yaml")


@pytest.fixture(scope="module")
def untouched(cfg, tmp_path_factory):
    """The problems of an untouched copy of results/quick (the committed results' own)."""
    root = tmp_path_factory.mktemp("untouched")
    shutil.copytree(QUICK, root / "results" / "quick")
    return check.problems(cfg, root)


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(QUICK, tmp_path / "results" / "quick")
    return tmp_path


def new_problems(cfg, root, untouched):
    return [p for p in check.problems(cfg, root) if p not in untouched]


def _set_cell(path, row, column, value):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[row, column] = value
    df.to_csv(path, index=False)


def _row(path, **match):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    hit = df
    for k, v in match.items():
        hit = hit[hit[k] == str(v)]
    assert len(hit) >= 1, match
    return int(hit.index[0])


def test_the_untouched_copy_has_no_problem(untouched):
    """The committed results are what the plan trains, and every table and choice follows from their records (issue
    35: since `mnist_w30_bestT` was retrained at the temperature the rule picks from the 3-seed sweep)."""
    assert untouched == []


def test_a_changed_number_in_summary_csv_is_named_by_its_cell(cfg, copy, untouched):
    path = copy / "results/quick/summary.csv"
    i = _row(path, section="mnist", system="teacher", metric="test_errors")
    _set_cell(path, i, "mean", "64.5")
    found = new_problems(cfg, copy, untouched)
    assert any(p.startswith(f"results/quick/summary.csv: row {i + 2} (mnist/sec3/teacher/test_errors), column mean")
               for p in found), found


def test_a_changed_number_in_mnist_md_is_named_by_its_line(cfg, copy, untouched):
    path = copy / "results/quick/mnist.md"
    lines = path.read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("| Teacher"))
    lines[i] = re.sub(r"\| (\d+\.\d) ±", lambda m: f"| {float(m.group(1)) - 20:.1f} ±", lines[i], count=1)
    assert lines[i] != path.read_text().splitlines()[i]
    path.write_text("\n".join(lines) + "\n")
    found = new_problems(cfg, copy, untouched)
    assert any(p.startswith(f"results/quick/mnist.md: line {i + 1}:") for p in found), found


def test_table1s_share_changed_in_ensembles_md_is_named(cfg, copy, untouched):
    """The share's value comes from the logits (not committed); the Markdown is still re-derived from the committed
    summary, so a number changed in the Markdown alone is seen (8.6 -> 61.1 crosses the 60% bar)."""
    path = copy / "results/quick/ensembles.md"
    text = path.read_text()
    assert "**8.6 ± 10.8 [-4.8, 21.9]%**" in text
    path.write_text(text.replace("**8.6 ± 10.8 [-4.8, 21.9]%**", "**61.1 ± 10.8 [-4.8, 21.9]%**"))
    found = new_problems(cfg, copy, untouched)
    assert any(p.startswith("results/quick/ensembles.md: line ") and "61.1" in p for p in found), found


def test_a_share_changed_in_a_sections_summary_is_named(cfg, copy, untouched):
    path = copy / "results/quick/ensembles_summary.csv"
    i = _row(path, section="speech_narrow", table="table1", system="distilled", metric="gain_recovered_pct")
    _set_cell(path, i, "mean", "61.1")
    found = new_problems(cfg, copy, untouched)
    # summary.csv no longer is its parts, and ensembles.md no longer renders that summary
    assert any(p.startswith("results/quick/summary.csv: row ") and "gain_recovered_pct), column mean" in p
               for p in found), found
    assert any(p.startswith("results/quick/ensembles.md: line ") for p in found), found


@pytest.mark.parametrize("table, match", [
    ("mnist_provenance.csv", {"system": "baseline", "seed": 1}),
    ("ensembles_provenance.csv", {"section": "fashion_mnist", "system": "baseline_3", "metric": "train_accuracy_pct",
                                  "seed": 1}),                              # a value its run record holds
    ("ensembles_provenance.csv", {"section": "speech", "system": "ensemble_arithmetic",
                                  "metric": "test_accuracy_pct", "seed": 0}),  # a value only the logits hold
])
def test_a_changed_per_seed_value_in_a_provenance_csv_is_named(cfg, copy, untouched, table, match):
    path = copy / "results/quick" / table
    i = _row(path, **match)
    old = float(pd.read_csv(path).loc[i, "value"])
    _set_cell(path, i, "value", f"{old + 7:g}")
    found = new_problems(cfg, copy, untouched)
    # the value itself where a record holds it, else the summary row it no longer makes (naming the provenance)
    assert any(p.startswith(f"results/quick/{table}: row ") or f"re-derived from its provenance (results/quick/"
               f"{table})" in p for p in found), found
    assert any(p.startswith("results/quick/provenance.csv: row ") for p in found), found  # no longer its parts


@pytest.mark.parametrize("job", ["distilled_T20", "variants/mnist_distilled_T20/hard"])
def test_an_edited_lr_in_a_runs_config_json_is_named(cfg, copy, untouched, job):
    path = copy / "results/quick/runs" / job / "config.json"
    written = json.loads(path.read_text())
    written["config"]["lr"] = 0.5
    path.write_text(json.dumps(written))
    found = new_problems(cfg, copy, untouched)
    assert any(p.startswith(f"results/quick/runs/{job}/config.json: its config is not the plan's") and "lr" in p
               for p in found), found
    assert any(p.startswith(f"results/quick/runs/{job}/config.json: its config is not the one") for p in found)


def test_an_extra_seed_folder_is_named(cfg, copy, untouched):
    runs = copy / "results/quick/runs"
    shutil.copytree(runs / "distilled_T20" / "seed0", runs / "distilled_T20" / "seed7")
    found = new_problems(cfg, copy, untouched)
    assert any(p.startswith("results/quick/runs/distilled_T20/seed7/: a seed job 'distilled_T20' does not train")
               for p in found), found


def test_a_seed_folder_without_its_record_is_named(cfg, copy, untouched):
    (copy / "results/quick/runs/baseline/seed1/metrics.json").unlink()
    found = new_problems(cfg, copy, untouched)
    assert any(p.startswith("results/quick/runs/baseline/seed1/: no metrics.json") for p in found), found
    assert any(p.startswith("results/quick/mnist_provenance.csv: cites") for p in found), found


def test_a_folder_no_job_owns_is_named_with_or_without_records(cfg, copy, untouched):
    runs = copy / "results/quick/runs"
    (runs / "distilled_T7").mkdir()
    shutil.copytree(runs / "baseline", runs / "variants" / "mnist_distilled_T20" / "js_kd")
    found = new_problems(cfg, copy, untouched)
    assert "results/quick/runs/distilled_T7/: a folder no planned job owns" in found, found
    assert ("results/quick/runs/variants/mnist_distilled_T20/js_kd/: a folder no planned job owns (it holds run "
            "records)") in found, found


def test_a_chosen_temperature_is_re_derived_by_the_sections_rule(cfg, copy, untouched):
    path = copy / "results/quick/variants/mnist_w30_bestT_temperature.json"
    chosen = json.loads(path.read_text())
    assert not any("mnist_w30_bestT_temperature.json" in p for p in check.problems(cfg, copy))
    path.write_text(json.dumps({**chosen, "temperature": 4.0}))
    assert any(p.startswith(f"results/quick/variants/mnist_w30_bestT_temperature.json: T=4.0 is stale: the section's "
                            f"rule picks T={chosen['temperature']:g}") for p in check.problems(cfg, copy))


def test_check_counts_what_it_could_not_re_derive(cfg, copy):
    """The ensembles' and specialists' values from logits (not committed) are counted, not silently passed."""
    found = rederive.problems(cfg, copy)
    assert found.compared > 10000 and found.underived > 100
    assert any(n.startswith("ensembles: its writer needs ") for n in found.notes), found.notes
    r = subprocess.run(["kdbench", "check", "--configfile", str(REPO / "config" / "quick.yaml")], cwd=copy,
                       capture_output=True, text=True)
    assert f"{found.underived} could not be re-derived" in r.stdout, r.stdout


def test_a_statistic_of_rounded_values_passes_and_a_moved_one_does_not(tmp_path):
    """The fallback re-derives a summary row from its provenance (6 significant digits): within their rounding it
    passes, a changed digit in the std does not."""
    vals = [87.4512, 87.5013, 87.3391]
    cell = aggregate.Cell("speech", "table1", "x", "test_accuracy_pct", "pct",
                          [(s, v + 1e-7 * s, f"results/quick/runs/x/seed{s}/logits.pt") for s, v in enumerate(vals)])
    res = tmp_path / "results" / "quick"
    aggregate.write_tables([cell], {}, res, "demo")
    with contextlib.chdir(tmp_path):
        out = rederive.partial(res.relative_to(tmp_path), ["demo_summary.csv"], {})
        assert out.problems == [] and out.underived == 3, out
        _set_cell(res / "demo_summary.csv", 0, "std", "0.0821")
        out = rederive.partial(res.relative_to(tmp_path), ["demo_summary.csv"], {})
        assert any("column std" in p for p in out.problems), out.problems
