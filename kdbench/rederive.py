"""Re-derive what a reader sees from what git keeps: the second half of `kdbench check`.

What this file achieves: `problems(cfg, root)` rebuilds every committed table of `results/<profile>/` in a temporary
folder with the section's own writer, from the committed run records, and compares it with the committed file cell by
cell (CSV) and line by line (Markdown), naming each cell that differs; it re-applies every choice derived from the runs
(a variants experiment's temperature, the MNIST bias shifts, an ensembles row's temperature, the specialists'
clusters) to its committed inputs and names a stale one; and it checks that `summary.csv` and `provenance.csv` are
the sections' parts, in order.

Some values live only in files git does not keep (a run's `logits.pt`: an ensemble's accuracy, a specialist
combination). Where a section's writer needs such a file and it is absent (a fresh clone), the section is re-derived
as far as the committed files allow: each provenance value whose source is a run record is read again from that
record, and each summary row that is a plain statistic of its seeds (mean, std, 95% interval, count) is recomputed
from the provenance; the rest (a share's ratio of seed means, the Markdown, a choice made on validation logits) is
counted, and `kdbench check` says how many cells it could not re-derive. Figures are not compared.
"""
from __future__ import annotations

import contextlib
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from kdbench import layout, sections
from kdbench.report import aggregate
from kdbench.sections import bias, mnist, specialists, variants

REPO = Path(__file__).resolve().parent.parent
MAX_CELLS = 8  # differing cells named per file; the rest are counted
UNDERIVED = "\x00"  # in a section's markdown_from_committed: a line whose values only uncommitted files hold
REL_TOL = 1e-5  # the tables are written with 6 significant digits (kdbench.report.aggregate.write_csv)


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    compared: int = 0     # cells (and Markdown lines, and choices) re-derived and compared
    underived: int = 0    # cells that could not be re-derived: their values live only in uncommitted files
    notes: list[str] = field(default_factory=list)  # which parts could not be re-derived, and why

    def add(self, other: Outcome) -> None:
        self.problems += other.problems
        self.compared += other.compared
        self.underived += other.underived
        self.notes += other.notes


# ------------------------------------------------------------------------------------------------ comparing files

def _same(a: str, b: str, abs_tol: float = 1e-9) -> bool:
    """Two cells as the suite writes them: equal strings, or numbers equal to the tables' precision (both NaN)."""
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if math.isnan(x) and math.isnan(y):
        return True
    return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=abs_tol)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def compare_csv(committed: Path, rebuilt: pd.DataFrame, name: str, key: list[str] | None = None) -> Outcome:
    """Cell-by-cell comparison of a committed CSV with the re-derived table (both as the suite writes them); each
    differing cell named by its row (the `key` columns' values) and column."""
    out = Outcome()
    old, new = _read(committed), rebuilt
    if list(old.columns) != list(new.columns):
        out.problems.append(f"{name}: columns {list(old.columns)}, re-derived {list(new.columns)}")
        return out
    if len(old) != len(new):
        out.problems.append(f"{name}: {len(old)} rows, the committed records make {len(new)}")
        return out
    diffs = []
    for i in range(len(old)):
        for col in old.columns:
            out.compared += 1
            a, b = old.iat[i, old.columns.get_loc(col)], new.iat[i, new.columns.get_loc(col)]
            if not _same(a, b):
                label = "/".join(old.iat[i, old.columns.get_loc(k)] for k in (key or []) if k in old.columns)
                diffs.append(f"{name}: row {i + 2}{f' ({label})' if label else ''}, column {col}: {a!r}, "
                             f"re-derived {b!r}")
    out.problems += diffs[:MAX_CELLS]
    if len(diffs) > MAX_CELLS:
        out.problems.append(f"{name}: and {len(diffs) - MAX_CELLS} more cells differ")
    return out


def compare_text(committed: Path, rebuilt: str | list[str], name: str) -> Outcome:
    """Line-by-line comparison of a committed Markdown table with the re-derived one (text, or its lines)."""
    out = Outcome()
    old, new = committed.read_text().splitlines(), rebuilt if isinstance(rebuilt, list) else rebuilt.splitlines()
    diffs = [f"{name}: line {i + 1}: {a!r}, re-derived {b!r}"
             for i, (a, b) in enumerate(zip(old, new)) if a != b]
    if len(old) != len(new):
        diffs.append(f"{name}: {len(old)} lines, re-derived {len(new)}")
    out.compared += max(len(old), len(new))
    out.problems += diffs[:MAX_CELLS]
    if len(diffs) > MAX_CELLS:
        out.problems.append(f"{name}: and {len(diffs) - MAX_CELLS} more lines differ")
    return out


KEYS = {"summary": ["section", "table", "system", "metric"],
        "provenance": ["section", "table", "system", "metric", "seed"],
        "variants": ["experiment", "variant"]}


def _key(filename: str) -> list[str]:
    if filename.endswith("_provenance.csv") or filename == "provenance.csv":
        return KEYS["provenance"]
    if filename.startswith("variants"):
        return KEYS["variants"]
    return KEYS["summary"]


def compare_folder(committed: Path, rebuilt: Path, files: list[str], rel: Path) -> Outcome:
    """Every CSV and Markdown file of `files` that is committed, against its rebuilt twin."""
    out = Outcome()
    for f in files:
        if not (committed / f).exists():
            continue
        name = str(rel / f)
        if not (rebuilt / f).exists():
            out.problems.append(f"{name}: the section's writer no longer makes it")
        elif f.endswith(".csv"):
            out.add(compare_csv(committed / f, _read(rebuilt / f), name, _key(f)))
        elif f.endswith(".md"):
            out.add(compare_text(committed / f, (rebuilt / f).read_text(), name))
    return out


# ------------------------------------------------------------------------------------------------ the sections

def _paper(cfg: dict, root: Path) -> dict:
    p = Path(cfg.get("paper_numbers", "config/paper_numbers.yaml"))
    path = p if p.is_absolute() else (root / p if (root / p).exists() else REPO / p)
    return aggregate.load_paper(path)


def _tables(section) -> list[str]:
    name = getattr(section, "NAME", None) or section.__name__.rsplit(".", 1)[-1]
    own = [f"{name}_summary.csv", f"{name}_provenance.csv"] if section.SUMMARY else []
    return own + [f for f in section.OUTPUTS if f.endswith((".csv", ".md"))]


def as_the_rules_pass_it(obj: dict) -> dict:
    """A config as an aggregate rule hands it to `kdbench aggregate` (JSON with sorted keys, `quoted_json`): the
    order of a section's datasets in its tables follows it."""
    return json.loads(json.dumps(obj, sort_keys=True))


def _writes(cfg: dict, paper: dict) -> list[tuple[str, list[str], object]]:
    """(what, the committed files it makes, a function writing them into a folder) for every table of the suite."""
    specs = [variants.table_config(cfg), variants.table_config(cfg, tables=("mnist",), name="variants_mnist")]
    cfg = as_the_rules_pass_it(cfg)
    runs, data = layout.runs(cfg["profile"]), cfg.get("data_root")
    out = []
    for name in sections.names():
        section = sections.get(name)
        if name == "variants":
            for spec in map(as_the_rules_pass_it, specs):  # made from the profile as the Snakefile reads it
                files = [f"{spec['name']}.csv", f"{spec['name']}.md"]
                out.append((spec["name"], files,
                            lambda tmp, spec=spec: variants.write(spec, runs, tmp, figures=False)))
            continue
        clusters = ({ds: layout.clusters(runs, ds) for ds in section.datasets(cfg)}
                    if name == "specialists" else None)
        out.append((name, _tables(section),
                    lambda tmp, section=section, clusters=clusters: section.write(
                        cfg, runs, tmp, paper=paper, root=data, clusters=clusters, figures=False)))
    return out


def problems(cfg: dict, root: Path | str = ".") -> Outcome:
    """Every committed table and derived choice of the profile `cfg` under `root`, re-derived (see the module)."""
    root = Path(root).resolve()
    results = layout.results(cfg["profile"])
    out = Outcome()
    if not (root / results).is_dir():
        return out
    paper = _paper(cfg, root)
    # from the checkout's root: the tables cite their sources relative to it, as the workflow writes them
    with contextlib.chdir(root), tempfile.TemporaryDirectory(prefix="kdbench-check-") as tmp:
        for what, files, write in _writes(cfg, paper):
            if not any((results / f).exists() for f in files):
                continue  # not made (yet) in this profile
            folder = Path(tmp) / what
            folder.mkdir()
            try:
                write(folder)
            except (FileNotFoundError, OSError, KeyError, ValueError) as e:
                why = _absent(e)
                if why is None:
                    out.problems.append(f"{results}/: the {what} tables cannot be re-derived from the committed "
                                        f"records: {type(e).__name__}: {e}")
                    continue
                out.notes.append(f"{what}: its writer needs {why}: re-derived from the committed records and "
                                 f"provenance as far as they go")
                out.add(partial(results, files, cfg, sections.get(what) if what in sections.names() else None))
                continue
            out.add(compare_folder(results, folder, files, results))
        out.add(parts(results, Path(tmp)))
        out.add(choices(cfg, results))
    return out


def _absent(e: Exception) -> str | None:
    """Why a writer could not read a file, when the file is one git does not keep (a `*.pt`) or the record of a run
    not made yet (a planned job with no folder under `runs/`: a profile run in pieces); else None. A table citing
    a record that is gone is the provenance check's (`kdbench.check`), a job missing some seeds' records the run
    tree's."""
    name = str(getattr(e, "filename", None) or (str(e).split("'")[1] if "'" in str(e) else ""))
    if name.endswith(".pt"):
        return f"{name}, which git does not keep"
    if name.endswith("metrics.json") and not Path(name).parent.parent.exists():
        return f"{name}, a run not made yet"
    return None


# ------------------------------------------------------------------------------------------------ without logits

def rounding_error(values: list[float]) -> float:
    """Half a unit in the 6th significant digit of the largest value: how far `%.6g` may have moved each one."""
    top = max((abs(v) for v in values if not math.isnan(v)), default=0.0)
    return 0.0 if top == 0 else 0.5 * 10.0 ** (math.floor(math.log10(top)) - 5)


def record_value(rec: dict, metric: str) -> float | None:
    """A provenance value as its run record holds it, for the metrics a record carries (None: not in the record)."""
    if metric == "test_errors" and "test_errors" in rec:
        return float(rec["test_errors"])
    for pct, key in (("test_accuracy_pct", "test_accuracy"), ("train_accuracy_pct", "train_accuracy")):
        if metric == pct and key in rec:
            return 100.0 * float(rec[key])
    return None


def partial(results: Path, files: list[str], cfg: dict, section=None) -> Outcome:
    """A section whose writer needs uncommitted files: its provenance values against the records they cite, its
    plain summary rows against its provenance; its Markdown from the committed summary where the section can write
    it so (`markdown_from_committed(cfg, runs, summary) -> {file: text}`, a line it cannot derive carrying
    `UNDERIVED`); shares, the rest of the Markdown, other tables and figures counted as not re-derived."""
    out = Outcome()
    summaries = [f for f in files if f.endswith("_summary.csv")]
    for f in summaries:
        prov_file = results / f.replace("_summary.csv", "_provenance.csv")
        if not (results / f).exists() or not prov_file.exists():
            continue
        prov = pd.read_csv(prov_file)
        out.add(_provenance_against_records(prov, prov_file))
        out.add(_summary_against_provenance(pd.read_csv(results / f), prov, results / f, prov_file))
    for f in files:  # a table of its own (variants.csv): its cells are only the writer's
        if f.endswith(".csv") and f not in summaries and not f.endswith("_provenance.csv") and (results / f).exists():
            out.underived += _read(results / f).size
    rendered = {}
    if section is not None and hasattr(section, "markdown_from_committed") and summaries:
        summary = pd.read_csv(results / summaries[0])
        rendered = section.markdown_from_committed(as_the_rules_pass_it(cfg), layout.runs(cfg["profile"]), summary)
    for f in (f for f in files if f.endswith(".md") and (results / f).exists()):
        out.add(_markdown(results / f, rendered.get(f)))
    return out


def _provenance_against_records(prov: pd.DataFrame, prov_file: Path) -> Outcome:
    """Each provenance value whose source is a committed run record, read again from that record."""
    out = Outcome()
    for i, row in prov.iterrows():
        src = row["source"]
        if not isinstance(src, str) or not src.endswith("metrics.json") or not Path(src).exists():
            out.underived += 1
            continue
        want = record_value(json.loads(Path(src).read_text()), row["metric"])
        if want is None:
            out.underived += 1
            continue
        out.compared += 1
        if not _same(str(row["value"]), str(want)):
            out.problems.append(f"{prov_file}: row {i + 2} ({row.section}/{row.table}/{row.system}/"
                                f"{row.metric}/seed {row.seed}), column value: {row['value']!r}, its record "
                                f"{src} holds {want!r}")
    return out


def _summary_against_provenance(summary: pd.DataFrame, prov: pd.DataFrame, path: Path, prov_file: Path) -> Outcome:
    """Each summary row that is a plain statistic of its seeds (not a share), recomputed from the provenance."""
    out = Outcome()
    for i, row in summary.iterrows():
        vals = prov[(prov.section == row.section) & (prov.table == row.table) & (prov.system == row.system)
                    & (prov.metric == row.metric)]["value"].astype(float).tolist()
        label = f"{path}: row {i + 2} ({row.section}/{row.table}/{row.system}/{row.metric})"
        if int(row.n_seeds) != len(vals):
            out.problems.append(f"{label}, column n_seeds: {row.n_seeds}, its provenance has {len(vals)} values")
            continue
        if row.metric in aggregate.SHARE_METRICS:
            out.underived += 1  # a ratio of seed means: its parts are not all in the provenance
            continue
        mean, std = aggregate.mean_std(vals)
        low, high = aggregate.ci95(mean, std, len(vals))
        # the provenance holds 6 significant digits: a statistic of rounded values moves by up to a few of
        # their rounding errors e (the mean by e, the std by sqrt(n / (n - 1)) e, the interval by both)
        e = rounding_error(vals)
        t = aggregate.t_crit(len(vals) - 1) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0
        tol = {"mean": 2 * e, "std": 3 * e, "ci95_low": 2 * e + 3 * t * e, "ci95_high": 2 * e + 3 * t * e}
        for col, want in (("mean", mean), ("std", std), ("ci95_low", low), ("ci95_high", high)):
            out.compared += 1
            if not _same(str(row[col]), str(want), abs_tol=tol[col]):
                out.problems.append(f"{label}, column {col}: {row[col]!r}, re-derived from its provenance "
                                    f"({prov_file}) {want!r}")
    return out


def _markdown(path: Path, rendered: str | None) -> Outcome:
    """A committed Markdown table against the one the section writes from its committed summary (None: it cannot);
    a line carrying `UNDERIVED` is compared as committed and counted as not re-derived."""
    out = Outcome()
    old = path.read_text().splitlines()
    if rendered is None:
        out.underived += len(old)
        return out
    new = rendered.splitlines()
    out.underived += sum(UNDERIVED in line for line in new)
    lines = [line if UNDERIVED not in line else (old[i] if i < len(old) else "") for i, line in enumerate(new)]
    out.add(compare_text(path, lines, str(path)))
    return out


# ------------------------------------------------------------------------------------------------ the suite's parts

def parts(results: Path, tmp: Path) -> Outcome:
    """summary.csv and provenance.csv: the sections' parts, in the sections' order (`kdbench summary`)."""
    out = Outcome()
    names = [n for n in sections.names() if sections.get(n).SUMMARY and (results / f"{n}_summary.csv").exists()]
    if not names:
        return out
    for whole, part, concat in (("summary.csv", "summary", aggregate.concat_summaries),
                                ("provenance.csv", "provenance", aggregate.concat_provenance)):
        if not (results / whole).exists():
            continue
        built = concat([results / f"{n}_{part}.csv" for n in names])
        aggregate.write_csv(built, tmp / whole)  # as `kdbench summary` writes it
        out.add(compare_csv(results / whole, _read(tmp / whole), str(results / whole), _key(whole)))
    return out


# ------------------------------------------------------------------------------------------------ derived choices

def choices(cfg: dict, results: Path) -> Outcome:
    """Each committed choice derived from the runs, re-applied by the section's own rule to its committed inputs."""
    out = Outcome()
    runs = layout.runs(cfg["profile"])
    for exp in variants.experiments(cfg):
        if exp.choice is None:
            continue
        path = layout.chosen_temperature(results, exp.name)
        if not path.exists():
            continue
        spec = variants.choice_config(cfg, exp)
        if not all(Path(p).exists() for p in variants.choice_inputs(spec, runs)):
            out.underived += 1
            out.notes.append(f"{path}: its inputs are not all committed (validation logits): not re-derived")
            continue
        now = variants.choose_temperature(spec, runs)
        was = json.loads(path.read_text())
        out.compared += 1
        if not _same(str(was.get("temperature")), str(now["temperature"])):
            scores = now.get("val_errors_by_temperature", now.get("val_error_pct_by_temperature"))
            out.problems.append(f"{path}: T={was.get('temperature')!r} is stale: the section's rule picks "
                                f"T={now['temperature']:g} from the committed runs (validation: {scores})")
    for system in ("omit3", "only78"):
        path = layout.bias(runs, system)
        if not path.exists():
            continue
        logits = layout.logits(runs, system)
        if not logits.exists():
            out.underived += 1
            continue
        out.add(_bias(cfg, system, path, logits))
    for ds in specialists.datasets(cfg):
        path, gen = layout.clusters(runs, ds), layout.logits(runs, specialists.generalist_job(ds))
        if not path.exists():
            continue
        if not gen.exists():
            out.underived += 1
            continue
        now = specialists.clusters_for(specialists.cluster_config(cfg, ds), ds, gen)
        out.compared += 1
        if json.loads(path.read_text()).get("clusters") != now["clusters"]:
            out.problems.append(f"{path}: stale: the generalist's committed run makes clusters {now['clusters']}")
    return out


def _bias(cfg: dict, system: str, path: Path, logits: Path) -> Outcome:
    out = Outcome()
    s = mnist.bias_settings(cfg, system)
    now = bias.correct(torch.load(logits, map_location="cpu"), s["classes"], s["grid"], s["paper_shift"])
    was = json.loads(path.read_text())["members"]
    for old, new in zip(was, now):
        out.compared += 1
        if not _same(str(old["val_shift"]), str(new["val_shift"])):
            out.problems.append(f"{path}: seed {old['seed']}: shift {old['val_shift']:+g} is stale: the rule picks "
                                f"{new['val_shift']:+g} on the committed run's validation logits")
    return out
