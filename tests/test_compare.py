"""Issue 39: `kdbench compare A B` says whether a regeneration reproduced the tables, cell by cell."""
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kdbench.report import compare

QUICK = Path(__file__).resolve().parents[1] / "results" / "quick"


@pytest.fixture
def copy(tmp_path):
    out = tmp_path / "quick"
    for name in ("summary.csv", "variants.csv"):
        out.mkdir(exist_ok=True)
        shutil.copy(QUICK / name, out / name)
    return out


def _move(path, cell, to):
    df = pd.read_csv(path)
    section, table, system, metric = cell.split("/")
    i = df[(df.section == section) & (df.table == table) & (df.system == system) & (df.metric == metric)].index[0]
    df.loc[i, "mean"] = to(df.loc[i])
    df.to_csv(path, index=False)


def test_a_copy_is_identical(copy):
    result = compare.compare(QUICK, copy)
    assert result.verdict == "identical" and (result.rows.status == "identical").all()
    assert len(result.rows) > 200  # the summary and the variants table


def test_a_value_inside_the_seeds_interval_is_reproduced(copy):
    _move(copy / "summary.csv", "speech/table5/soft_3/gap_recovered_pct",
          lambda r: r["mean"] + 0.5 * (r.ci95_high - r["mean"]))
    result = compare.compare(QUICK, copy)
    assert result.verdict == "reproduced"
    assert (result.rows.status == "inside").sum() == 1


def test_a_value_outside_the_seeds_interval_is_named_and_fails(copy):
    _move(copy / "summary.csv", "speech/table5/soft_3/gap_recovered_pct", lambda r: r.ci95_high + 1.0)
    r = subprocess.run([sys.executable, "-m", "kdbench.cli", "compare", str(QUICK), str(copy)], capture_output=True,
                       text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "summary.csv: speech/table5/soft_3/gap_recovered_pct: A 64.3035" in r.stdout
    assert "outside, A's interval [61.22, 67.38]" in r.stdout and r.stdout.strip().endswith("not reproduced")


def test_a_missing_row_and_a_missing_folder_are_said(copy, tmp_path):
    df = pd.read_csv(copy / "summary.csv")
    df.iloc[1:].to_csv(copy / "summary.csv", index=False)
    result = compare.compare(QUICK, copy)
    assert result.verdict == "not reproduced" and (result.rows.status == "only in A").sum() == 1
    assert compare.main(str(QUICK), str(tmp_path / "nowhere")) == 2
