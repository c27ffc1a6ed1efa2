"""`kdbench check`: is every committed result what the current plan trains, from committed code?

What this file achieves: `problems(cfg)` reads `results/<profile>/` and returns one line per problem, naming the file:
  - a run record (`runs/<job>/seed<S>/metrics.json`) whose recorded config is not the plan's config for that job
    (`kdbench.plan`, resolved by `kdbench.engine.config.resolve`, with the temperature chosen on validation where the
    job reads one); a key the record lacks counts as its default (keys added to the engine later, at their default,
    change nothing); specialists' jobs (planned from their clusters) are checked for their commit only;
  - a run record whose job the plan no longer has;
  - a run record made from a `-dirty` tree, or from a commit that is not in this repository's history;
  - a table (`*_provenance.csv`, `variants*.csv`) citing a run record that does not exist, fails one of the checks
    above, or is not the run the table was made from (its `kdbench.records.run_identity` changed: a replaced run);
  - a file under `benchmarks/<rule>/` or `logs/<rule>/` for a rule the workflow no longer has;
  - a run's `config.json` that is not the plan's config (or seeds) for its job, or not the config its records carry;
  - a folder under `runs/` that no planned job owns (with or without records), a seed folder of a seed its job does
    not train, and a planned job whose folder lacks the record of one of its seeds (the workflow trains it again);
  - a committed table, or a choice derived from the runs, that differs from what the section's own code derives
    from the committed records (`kdbench.rederive`, which names each cell).
`kdbench check --configfile PROFILE` prints them and exits 1 when there is any (0 and "clean" when none), and says how
many cells it could not re-derive (values only an uncommitted file such as a `logits.pt` holds).
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd

from kdbench import layout, plan, profile, rederive, sections
from kdbench.data import registry as data_registry
from kdbench.records import cited_records, record_spec, run_identity

REPO = Path(__file__).resolve().parent.parent
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def workflow_rules() -> set[str]:
    """The rule names the workflow defines (`rule NAME:`, `use rule ... as NAME`, one `fetch_<dataset>` per
    registered dataset, which `workflow/rules/data.smk` makes, one `aggregate_<section>` per section, and the
    training rule, which train.smk makes in a loop, one per seed list, all logging under `plan.TRAIN_RULE`)."""
    names = {f"fetch_{name}" for name in data_registry.names()} | {f"aggregate_{n}" for n in sections.names()}
    names.add(plan.TRAIN_RULE)
    for path in RULE_FILES:
        text = path.read_text()
        names |= set(re.findall(r"^(?:rule|checkpoint) (\w+):", text, re.M))
        names |= set(re.findall(r"^\s*use rule \w+ as (\w+)", text, re.M))
    return names


def _commit_known(sha: str, cache: dict) -> bool:
    if sha not in cache:
        r = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=REPO, capture_output=True)
        cache[sha] = r.returncode == 0
    return cache[sha]


def _planned_config(job, root: Path) -> dict:
    chosen = root / job.temperature_from if job.temperature_from else None
    return plan.bound_config(job.config, f"job {job.name!r}", chosen if chosen and chosen.exists() else None)


def _config_differences(first: dict, second: dict, names: tuple[str, str] = ("recorded", "planned")) -> list[str]:
    """The keys where two flat configs differ, each read as a record is (`kdbench.records.record_spec`), the two
    named by `names`; a config that cannot be read so is named with the reason."""
    read = []
    for name, flat in zip(names, (first, second)):
        try:
            read.append(record_spec(flat).config())
        except ValueError as e:
            return [f"the {name} config has {e}"]
    a, b = read
    return [f"{k}: {names[0]} {a[k]!r}, {names[1]} {b[k]!r}" for k in sorted(a) if a[k] != b[k]]


def problems(cfg: dict, root: Path | str = ".") -> list[str]:
    """One line per problem (see the module), each naming its file."""
    return report(cfg, root)[0]


def report(cfg: dict, root: Path | str = ".") -> tuple[list[str], object]:
    """The problems, and the `kdbench.rederive.Outcome` of re-deriving the tables (how many cells it compared and
    how many it could not re-derive)."""
    root = Path(root)
    results = root / layout.results(cfg["profile"])
    runs = root / layout.runs(cfg["profile"])
    jobs = plan.jobs(cfg)
    out, bad_records, commits = [], set(), {}
    for path in sorted(runs.rglob("metrics.json")):
        rel = path.relative_to(runs)
        job_name = str(rel.parent.parent)
        rec = json.loads(path.read_text())
        where = str(path.relative_to(root))
        found = []
        commit = rec.get("git_commit", "unknown")
        if commit.endswith("-dirty"):
            found.append(f"{where}: made from a dirty tree ({commit})")
        elif not re.fullmatch(r"[0-9a-f]{40}", commit) or not _commit_known(commit, commits):
            found.append(f"{where}: made from commit {commit!r}, which is not in this repository's history")
        if job_name in jobs:
            diff = _config_differences(rec.get("config", {}), _planned_config(jobs[job_name], root))
            if diff:
                found.append(f"{where}: its config is not the plan's for job {job_name!r}: " + "; ".join(diff[:4]))
        elif not job_name.startswith("specialists/"):
            found.append(f"{where}: the plan has no job {job_name!r} (a run the workflow no longer makes)")
        if found:
            bad_records.add(where)
            out += found
    for table, cited in _citations(results):
        out += _citation_problems(table.relative_to(root), cited, root, bad_records)
    out += _run_tree_problems(runs, root, jobs)
    derived = rederive.problems(cfg, root)
    out += derived.problems
    rules = workflow_rules()
    for kind in ("benchmarks", "logs"):
        for folder in sorted(p for p in (results / kind).glob("*") if p.is_dir()):
            if folder.name not in rules:
                out.append(f"{folder.relative_to(root)}/: files of rule {folder.name!r}, which the workflow no "
                           f"longer has")
    return out, derived


def _run_tree_problems(runs: Path, root: Path, jobs: dict) -> list[str]:
    """Every folder under `runs/` belongs to a planned job (its folder, a folder above jobs, or one of its seeds'
    folders); a job's `config.json` is the plan's and its records'; a job that has a folder has every seed's record.
    The specialists' runs (planned from their clusters) need only their seeds' records."""
    out = []
    if not runs.is_dir():
        return out
    names = set(jobs)
    above = {str(Path(n).parents[i]) for n in names for i in range(len(Path(n).parents) - 1)}
    for folder in sorted(p for p in runs.rglob("*") if p.is_dir()):
        rel = folder.relative_to(runs).as_posix()
        where = folder.relative_to(root)
        parent = folder.parent.relative_to(runs).as_posix()
        seed = re.fullmatch(r"seed(\d+)", folder.name)
        if rel in names or rel in above or (rel.startswith("specialists/") and not seed):
            continue
        if seed and parent in names:
            if int(seed.group(1)) not in jobs[parent].seeds:
                out.append(f"{where}/: a seed job {parent!r} does not train (seeds {list(jobs[parent].seeds)})")
            elif not (folder / "metrics.json").exists():
                out.append(f"{where}/: no metrics.json (the workflow trains job {parent!r} again)")
        elif seed and parent.startswith("specialists/"):
            if not (folder / "metrics.json").exists():
                out.append(f"{where}/: no metrics.json (the workflow trains job {parent!r} again)")
        else:
            out.append(f"{where}/: a folder no planned job owns" + (" (it holds run records)" if any(
                folder.rglob("metrics.json")) else ""))
    for name, job in sorted(jobs.items()):
        folder = runs / name
        if not folder.is_dir():
            continue  # not run yet
        missing = [s for s in job.seeds if not (layout.metrics(runs, name, s)).exists()]
        if missing and any(layout.metrics(runs, name, s).exists() for s in job.seeds):
            out.append(f"{folder.relative_to(root)}/: no record of seed(s) {missing} (the workflow trains job "
                       f"{name!r} again)")
        cfg_file = folder / "config.json"
        if not cfg_file.exists():
            continue
        written = json.loads(cfg_file.read_text())
        where = cfg_file.relative_to(root)
        planned = _planned_config(job, root)
        diff = _config_differences(written.get("config", {}), planned)
        if diff:
            out.append(f"{where}: its config is not the plan's for job {name!r}: " + "; ".join(diff[:4]))
        if list(written.get("seeds", job.seeds)) != list(job.seeds):
            out.append(f"{where}: seeds {written.get('seeds')}, the plan's are {list(job.seeds)}")
        for s in job.seeds:
            path = layout.metrics(runs, name, s)
            if path.exists():
                rec = json.loads(path.read_text()).get("config", {})
                diff = _config_differences(written.get("config", {}), rec, ("config.json's", "record's"))
                if diff:
                    out.append(f"{where}: its config is not the one {path.relative_to(root)} records: "
                               + "; ".join(diff[:4]))
    return out


def _citations(results: Path) -> list[tuple[Path, dict[str, str | None]]]:
    """Each table file with what it cites: {source: its identity when the table was made}. Sections' provenance
    (`*_provenance.csv`: source, source_sha256) and the variants' tables (`variants*.csv`: `;`-joined sources and
    sources_sha256); a table from before identities were recorded cites None."""
    found = []
    for path in sorted(results.glob("*provenance.csv")):
        df = pd.read_csv(path, dtype=str)
        sha = df["source_sha256"] if "source_sha256" in df else [None] * len(df)
        found.append((path, {s: h if isinstance(h, str) else None for s, h in zip(df["source"], sha)
                             if isinstance(s, str)}))
    for path in sorted(results.glob("variants*.csv")):
        df = pd.read_csv(path, dtype=str)
        cited = {}
        for srcs, shas in zip(df["sources"], df["sources_sha256"] if "sources_sha256" in df else [None] * len(df)):
            srcs = srcs.split(";")
            cited.update(zip(srcs, shas.split(";") if isinstance(shas, str) else [None] * len(srcs)))
        found.append((path, cited))
    return found


def _citation_problems(table: Path, cited: dict[str, str | None], root: Path, bad_records: set[str]) -> list[str]:
    """A cited source must exist (a run's records, for a file git does not keep such as logits.pt), be current
    (no record of its run among `bad_records`), and be the run the table was made from (the same identity)."""
    out = []
    for src, sha in sorted(cited.items()):
        now = run_identity(root / src)
        if now is None:
            out.append(f"{table}: cites {src}, which does not exist (a replaced or deleted run)")
        elif any(str(f.relative_to(root)) in bad_records for f in cited_records(root / src)[0]):
            out.append(f"{table}: cites {src}, which is not a current run (above)")
        elif sha is None:
            out.append(f"{table}: cites {src} without its identity (made before `kdbench check` recorded one): "
                       f"aggregate again")
        elif sha != now:
            out.append(f"{table}: cites {src}, which has changed since the table was made (a replaced run: "
                       f"identity {sha}, now {now})")
    return out


def main(configfile: str, root: str = ".") -> int:
    cfg = profile.load(configfile)
    found, derived = report(cfg, root)
    for line in found:
        print(line)
    for note in derived.notes:
        print(f"note: {note}")
    print(f"re-derived and compared {derived.compared} cells of the committed tables and choices; "
          f"{derived.underived} could not be re-derived (their values live only in files git does not keep)")
    print(f"{configfile}: {len(found)} problem(s)" if found else f"{configfile}: clean")
    return 1 if found else 0
