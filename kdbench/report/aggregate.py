"""From per-seed values to the suite's tables: summary rows (mean +- std over seeds and the 95% t interval of the
mean, beside the paper's number), provenance rows (every seed's value, the file it came from and that file's
identity), and the paper's numbers file.

A share (the MNIST student's share of the teacher-baseline gap, the share of an ensemble's gain a distilled net keeps,
the share of the 3%-vs-100% gap soft targets recover) is one thing, computed by `share_cell`: the ratio of the
seed-mean gains, with a paired delta-method 95% interval over seeds, so every seed counts and no seed's own tiny
denominator can blow it up. Other derived claims (a gain in points, a relative gain, a variant's difference to
hinton) are computed per seed from that seed's own runs before they are averaged, so their interval is the paired
one."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from kdbench.records import atomic_write_bytes, run_identity

SUMMARY_COLUMNS = ["section", "table", "system", "metric", "paper", "mean", "std", "ci95_low", "ci95_high", "n_seeds",
                   "unit"]
# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond, the Cornish-Fisher expansion
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
# the metrics a share is reported under (`share_cell`): its mean is a ratio of seed means, not the mean of its seeds'
SHARE_METRICS = ("gap_closed_pct", "gain_recovered_pct", "gap_recovered_pct")
# source_sha256: `kdbench.records.run_identity` of the source when the table was made (`kdbench check` compares it)
PROVENANCE_COLUMNS = ["section", "table", "system", "metric", "seed", "value", "source", "source_sha256"]


def load_paper(path: Path | str) -> dict[tuple[str, str, str], float]:
    """The paper's numbers, keyed by (section, system, metric); an entry whose section is a list stands beside
    each of those sections (the paper's speech numbers beside both analogs of its speech rows)."""
    entries = yaml.safe_load(Path(path).read_text())["numbers"]
    return {(sec, e["system"], e["metric"]): e["value"] for e in entries
            for sec in (e["section"] if isinstance(e["section"], list) else [e["section"]])}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); std is NaN for fewer than two values, both for none."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def t_crit(df: int) -> float:
    """The two-sided 95% critical value of Student's t with df degrees of freedom."""
    if df < 1:
        raise ValueError(f"t needs at least one degree of freedom, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def ci95(mean: float, std: float, n: int) -> tuple[float, float]:
    """The 95% t interval of a mean of n values (per-seed values, or paired differences); NaN for fewer than two."""
    if n < 2 or math.isnan(std):
        return math.nan, math.nan
    half = t_crit(n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def paired_note(diffs: list[float]) -> tuple[float, float, str]:
    """Mean and std of paired differences (e.g. variant - hinton per seed) and a paired t-test note at the 5% level."""
    n = len(diffs)
    mean, std = mean_std(diffs)
    if n < 2:
        return mean, std, "one seed: no test"
    if std == 0:
        return mean, std, "identical on every seed" if mean == 0 else "same difference on every seed"
    t = mean / (std / math.sqrt(n))
    verdict = "p < 0.05" if abs(t) > t_crit(n - 1) else "n.s."
    return mean, std, f"paired t = {t:.2f}, {verdict} (n = {n})"


def read_json(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


@dataclass
class Cell:
    """One table cell: per-seed values of one metric of one system, with where each value came from."""
    section: str
    table: str
    system: str
    metric: str
    unit: str
    values: list[tuple[int, float, str]] = field(default_factory=list)  # (seed, value, source file)

    def summary(self, paper: dict) -> dict:
        mean, std = mean_std([v for _, v, _ in self.values])
        low, high = ci95(mean, std, len(self.values))
        return {"section": self.section, "table": self.table, "system": self.system, "metric": self.metric,
                "paper": paper.get((self.section, self.system, self.metric), math.nan), "mean": mean, "std": std,
                "ci95_low": low, "ci95_high": high, "n_seeds": len(self.values), "unit": self.unit}

    def provenance(self) -> list[dict]:
        return [{"section": self.section, "table": self.table, "system": self.system, "metric": self.metric,
                 "seed": s, "value": v, "source": src} for s, v, src in self.values]


@dataclass
class ShareCell(Cell):
    """A share in percent: how far `value` gets from `low` to `high`, as the ratio of their seed means,
    100 * (mean(value) - mean(low)) / (mean(high) - mean(low)). Its std and 95% interval are the paired delta method's
    (the ratio estimator's): each seed's linearised share d_s = 100 * (a_s - R b_s) / mean(b), with a_s = value_s -
    low_s and b_s = high_s - low_s, has mean 0 and sample std `std`; the interval is R +- t(n-1) std / sqrt(n).
    `values` (the provenance) keeps each seed's own share; `parts` the (seed, value, low, high) it comes from."""
    parts: list[tuple[int, float, float, float]] = field(default_factory=list)

    def summary(self, paper: dict) -> dict:
        row = super().summary(paper)
        ratio, std = share_of_means(self.parts)
        low, high = ci95(ratio, std, len(self.parts))
        return {**row, "mean": ratio, "std": std, "ci95_low": low, "ci95_high": high}


def share_of_means(parts: list[tuple[int, float, float, float]]) -> tuple[float, float]:
    """(ratio of seed means in percent, std of its per-seed linearisation) of (seed, value, low, high) tuples; NaN
    where the mean gap is zero, std NaN for fewer than two seeds."""
    n = len(parts)
    a = [v - lo for _, v, lo, _ in parts]
    b = [hi - lo for _, _, lo, hi in parts]
    mean_b = sum(b) / n if n else 0.0
    if mean_b == 0:
        return math.nan, math.nan
    ratio = sum(a) / n / mean_b
    d = [100.0 * (ai - ratio * bi) / mean_b for ai, bi in zip(a, b)]
    return 100.0 * ratio, mean_std(d)[1]


def share_of_gap(value: float, low: float, high: float) -> float:
    """One seed's share in percent of the way from `low` to `high` that `value` gets (NaN where low == high)."""
    return 100.0 * (value - low) / (high - low) if high != low else math.nan


def share_cell(section: str, table: str, system: str, metric: str,
               per_seed: list[tuple[int, float, float, float, str]]) -> ShareCell:
    """The suite's one share: (seed, value, low, high, source) per seed -> a ShareCell (see there); its metric is one
    of SHARE_METRICS, so that a reader of the tables (`kdbench check`) knows its mean is not its seeds' mean."""
    if metric not in SHARE_METRICS:
        raise ValueError(f"a share's metric is one of {SHARE_METRICS}, got {metric!r}")
    return ShareCell(section, table, system, metric, "pct",
                     [(s, share_of_gap(v, lo, hi), src) for s, v, lo, hi, src in per_seed],
                     [(s, v, lo, hi) for s, v, lo, hi, _ in per_seed])


def tables(cells: list[Cell], paper: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    summary = pd.DataFrame([c.summary(paper) for c in cells], columns=SUMMARY_COLUMNS)
    rows = [r for c in cells for r in c.provenance()]
    identity = {src: run_identity(src) for src in {r["source"] for r in rows if r["source"]}}
    prov = pd.DataFrame([{**r, "source_sha256": identity.get(r["source"])} for r in rows], columns=PROVENANCE_COLUMNS)
    return summary, prov


def fmt(mean: float, std: float, digits: int = 1) -> str:
    if isinstance(mean, float) and math.isnan(mean):
        return "–"
    if isinstance(std, float) and math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_ci(row, digits: int = 1) -> str:
    """ " [low, high]" of a summary row's 95% interval, or "" where it has none (one seed)."""
    low, high = row["ci95_low"], row["ci95_high"]
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return ""
    return f" [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_row(row, digits: int = 1) -> str:
    """A summary row (or None: no such row) as "mean ± std" for a Markdown table."""
    return "–" if row is None else fmt(row["mean"], row["std"], digits)


def fmt_claim(row, digits: int = 1) -> str:
    """A summary row as "mean ± std [low, high]": a derived claim with its 95% interval over seeds."""
    return "–" if row is None else f"{fmt_row(row, digits)}{fmt_ci(row, digits)}"


def fmt_paper(row) -> str:
    """ " (the paper's number)" of a summary row, or "" where the paper has none."""
    return "" if row is None or pd.isna(row["paper"]) else f" ({row['paper']:g})"


def write_csv(df: pd.DataFrame, path: Path | str) -> None:
    atomic_write_bytes(path, df.to_csv(index=False, float_format="%.6g").encode())


def concat_summaries(paths: list[Path | str]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)[SUMMARY_COLUMNS]


def concat_provenance(paths: list[Path | str]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)[PROVENANCE_COLUMNS]


def write_tables(cells: list[Cell], paper: dict, out: Path, name: str) -> pd.DataFrame:
    """A section's <name>_summary.csv and <name>_provenance.csv from its cells; returns the summary."""
    summary, prov = tables(cells, paper)
    write_csv(summary, Path(out) / f"{name}_summary.csv")
    write_csv(prov, Path(out) / f"{name}_provenance.csv")
    return summary
