"""`kdbench check`: is every committed result what the current plan trains, from committed code?

What this file achieves: `problems(cfg)` reads `results/<profile>/` and returns one line per problem, naming the file:
  - a run record (`runs/<job>/seed<S>/metrics.json`) whose recorded config is not the plan's config for that job
    (`kdbench.plan`, resolved by `kdbench.config.resolve`, with the temperature chosen on validation where the job
    reads one); a key the record lacks counts as its default (keys added to the engine later, at their default,
    change nothing); specialists' jobs (planned from their clusters) are checked for their commit only;
  - a run record whose job the plan no longer has;
  - a run record made from a `-dirty` tree, or from a commit that is not in this repository's history;
  - a table (`*_provenance.csv`, `variants*.csv`) citing a run record that does not exist, fails one of the checks
    above, or is not the run the table was made from (its `kdbench.records.run_identity` changed: a replaced run);
  - a file under `benchmarks/<rule>/` or `logs/<rule>/` for a rule the workflow no longer has.
`kdbench check --configfile PROFILE` prints them and exits 1 when there is any (0 and "clean" when none).
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd

from kdbench import layout

REPO = Path(__file__).resolve().parent.parent
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def workflow_rules() -> set[str]:
    """The rule names the workflow defines (`rule NAME:`, `use rule ... as NAME`, one `fetch_<dataset>` per
    registered dataset, which `workflow/rules/data.smk` makes, and one `aggregate_<section>` per section)."""
    from kdbench import sections
    from kdbench.data import registry as data_registry
    names = {f"fetch_{name}" for name in data_registry.names()} | {f"aggregate_{n}" for n in sections.names()}
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
    from kdbench.config import resolve
    cfg = resolve(job.config, where=f"job {job.name!r}")
    if job.temperature_from and (root / job.temperature_from).exists():
        chosen = json.loads((root / job.temperature_from).read_text())["temperature"]
        cfg["variant_params"] = {**cfg["variant_params"], "temperature": chosen}
    return cfg


def _config_differences(recorded: dict, planned: dict, defaults: dict) -> list[str]:
    keys = sorted(set(recorded) | set(planned))
    diff = []
    for k in keys:
        rec = recorded.get(k, defaults.get(k))
        if rec != planned.get(k, defaults.get(k)):
            diff.append(f"{k}: recorded {rec!r}, planned {planned.get(k)!r}")
    return diff


def problems(cfg: dict, root: Path | str = ".") -> list[str]:
    from kdbench import plan
    from kdbench.config import DEFAULTS
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
            diff = _config_differences(rec.get("config", {}), _planned_config(jobs[job_name], root), DEFAULTS)
            if diff:
                found.append(f"{where}: its config is not the plan's for job {job_name!r}: " + "; ".join(diff[:4]))
        elif not job_name.startswith("specialists/"):
            found.append(f"{where}: the plan has no job {job_name!r} (a run the workflow no longer makes)")
        if found:
            bad_records.add(where)
            out += found
    for table, cited in _citations(results):
        out += _citation_problems(table.relative_to(root), cited, root, bad_records)
    rules = workflow_rules()
    for kind in ("benchmarks", "logs"):
        for folder in sorted(p for p in (results / kind).glob("*") if p.is_dir()):
            if folder.name not in rules:
                out.append(f"{folder.relative_to(root)}/: files of rule {folder.name!r}, which the workflow no "
                           f"longer has")
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
    from kdbench.records import cited_records, run_identity
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
    from kdbench import profile
    cfg = profile.load(configfile)
    found = problems(cfg, root)
    for line in found:
        print(line)
    print(f"{configfile}: {len(found)} problem(s)" if found else f"{configfile}: clean")
    return 1 if found else 0
