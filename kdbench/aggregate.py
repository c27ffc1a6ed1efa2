"""From per-seed values to the suite's tables: summary rows (mean +- std over seeds beside the paper's number),
provenance rows (every seed's value and the file it came from), and the paper's numbers file."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

SUMMARY_COLUMNS = ["section", "table", "system", "metric", "paper", "mean", "std", "n_seeds", "unit"]
PROVENANCE_COLUMNS = ["section", "table", "system", "metric", "seed", "value", "source"]


def load_paper(path: Path | str) -> dict[tuple[str, str, str], float]:
    """The paper's numbers, keyed by (section, system, metric)."""
    entries = yaml.safe_load(Path(path).read_text())["numbers"]
    return {(e["section"], e["system"], e["metric"]): e["value"] for e in entries}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); std is NaN for fewer than two values, both for none."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


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
        return {"section": self.section, "table": self.table, "system": self.system, "metric": self.metric,
                "paper": paper.get((self.section, self.system, self.metric), math.nan),
                "mean": mean, "std": std, "n_seeds": len(self.values), "unit": self.unit}

    def provenance(self) -> list[dict]:
        return [{"section": self.section, "table": self.table, "system": self.system, "metric": self.metric,
                 "seed": s, "value": v, "source": src} for s, v, src in self.values]


def tables(cells: list[Cell], paper: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    summary = pd.DataFrame([c.summary(paper) for c in cells], columns=SUMMARY_COLUMNS)
    prov = pd.DataFrame([r for c in cells for r in c.provenance()], columns=PROVENANCE_COLUMNS)
    return summary, prov


def fmt(mean: float, std: float, digits: int = 1) -> str:
    if isinstance(mean, float) and math.isnan(mean):
        return "–"
    if isinstance(std, float) and math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_csv(df: pd.DataFrame, path: Path | str) -> None:
    from kdbench.records import atomic_write_bytes
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
