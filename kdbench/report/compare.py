"""`kdbench compare A B`: did a regeneration reproduce the committed tables?

What this file achieves: it reads the summary (and, where both have it, the variants table) of two results folders,
for example the committed `results/quick` and a fresh regeneration of it, and for every cell prints both values and
their difference, and whether B's value lies inside A's 95% interval over seeds. Its verdict is one of
  - identical: every cell the same to the tables' 6 significant digits (what the same CPU kind, code and seeds give);
  - reproduced: every cell of B inside A's 95% interval (or equal, where A has no interval);
  - not reproduced: the cells outside, named, and the rows only one folder has.
`compare(a, b)` returns the rows and the verdict; the command prints them and exits 0 for identical or reproduced,
1 otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

KEYS = {"summary.csv": (["section", "table", "system", "metric"], "mean", ("ci95_low", "ci95_high")),
        "variants.csv": (["experiment", "variant"], "mean", None)}
REL_TOL = 1e-5  # the tables' 6 significant digits


@dataclass
class Verdict:
    rows: pd.DataFrame   # table, cell, a, b, diff, a_interval, status (identical / inside / outside / only in A|B)
    verdict: str         # identical / reproduced / not reproduced

    def lines(self, show: str = "differing") -> list[str]:
        rows = self.rows if show == "all" else self.rows[self.rows.status != "identical"]
        out = [f"{r.table}: {r.cell}: A {r.a:g}, B {r.b:g}, B - A {r.diff:+.4g} ({r.status}{r.interval})"
               for r in rows.itertuples()]
        counts = self.rows.status.value_counts().to_dict()
        out.append(f"{len(self.rows)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                   + f". Verdict: {self.verdict}")
        return out


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)


def _rows(name: str, a: pd.DataFrame, b: pd.DataFrame) -> list[dict]:
    keys, value, interval = KEYS[name]
    merged = a.merge(b, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    out = []
    for r in merged.to_dict("records"):
        cell = "/".join(str(r[k]) for k in keys)
        va, vb = float(r.get(f"{value}_a", math.nan)), float(r.get(f"{value}_b", math.nan))
        row = {"table": name, "cell": cell, "a": va, "b": vb, "diff": vb - va, "interval": ""}
        if r["_merge"] != "both":
            row["status"] = "only in A" if r["_merge"] == "left_only" else "only in B"
        elif _same(va, vb) and (interval is None or all(_same(float(r[f"{c}_a"]), float(r[f"{c}_b"]))
                                                        for c in interval)):
            row["status"] = "identical"
        elif interval is not None and not math.isnan(float(r[f"{interval[0]}_a"])):
            low, high = float(r[f"{interval[0]}_a"]), float(r[f"{interval[1]}_a"])
            row["interval"] = f", A's interval [{low:.4g}, {high:.4g}]"
            row["status"] = "inside" if low <= vb <= high else "outside"
        else:
            row["status"] = "outside"  # no interval to judge by (one seed, or a variants row): it must be equal
        out.append(row)
    return out


def compare(a: Path | str, b: Path | str) -> Verdict:
    """Every cell of A's and B's summary.csv (and variants.csv where both have one), judged (see the module)."""
    a, b = Path(a), Path(b)
    if not (a / "summary.csv").exists() or not (b / "summary.csv").exists():
        missing = [str(p / "summary.csv") for p in (a, b) if not (p / "summary.csv").exists()]
        raise FileNotFoundError(f"no {' or '.join(missing)}: compare two results folders (results/<profile>/)")
    rows = []
    for name in KEYS:
        if (a / name).exists() and (b / name).exists():
            rows += _rows(name, pd.read_csv(a / name), pd.read_csv(b / name))
    df = pd.DataFrame(rows, columns=["table", "cell", "a", "b", "diff", "interval", "status"])
    if (df.status == "identical").all():
        verdict = "identical"
    elif df.status.isin(["identical", "inside"]).all():
        verdict = "reproduced"
    else:
        verdict = "not reproduced"
    return Verdict(df, verdict)


def main(a: str, b: str, show: str = "differing") -> int:
    try:
        result = compare(a, b)
    except FileNotFoundError as e:
        print(f"kdbench compare: {e}")
        return 2
    for line in result.lines(show):
        print(line)
    return 0 if result.verdict in ("identical", "reproduced") else 1
