"""Time one workflow run and append its row to results/bench/workflow.csv.

    python benchmarks/workflow.py --configfile config/config.yaml --cores 2 mnist_table
    python benchmarks/workflow.py --configfile config/quick.yaml --jobs 'ensembles/speech/*'

What this file achieves: it runs `snakemake --cores N --configfile PROFILE TARGET...` exactly as a user would, after a
dry run that counts the jobs it will run, and records profile, target, device, cores, wall seconds, jobs and the
commit (with "-dirty" when the code or configuration differ from it, `kdbench.records.git_commit`). `--jobs PATTERN`
times the planned jobs whose names match (and what they need that is not there yet), the targets that
`kdbench plan PROFILE --jobs PATTERN --targets` names, and records the row's target as `jobs:PATTERN`: a profile too
long for one sitting is timed in pieces from one clone, their rows summing to the whole. A failed run appends nothing
and exits with snakemake's status. Run it with nothing else on the machine: the row is a wall time.
"""
from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from kdbench.records import git_commit  # noqa: E402

FIELDS = ["date", "profile", "target", "device", "cores", "wall_seconds", "jobs", "commit"]


def planned_jobs(cmd: list[str]) -> int:
    """The number of jobs snakemake's dry run plans ("total  N" in its job-stats table; 0 when nothing to do)."""
    out = subprocess.run(cmd + ["-n"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"dry run failed:\n{out.stdout}\n{out.stderr}")
    m = re.search(r"^total\s+(\d+)", out.stdout + out.stderr, re.M)
    return int(m.group(1)) if m else 0


def job_targets(profile: str, pattern: str) -> list[str]:
    """The snakemake targets of the planned jobs whose names match `pattern` (`kdbench plan --jobs ... --targets`)."""
    out = subprocess.run([sys.executable, "-m", "kdbench.cli", "plan", profile, "--jobs", pattern, "--targets"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.split():
        sys.exit(f"no planned job of {profile} matches {pattern!r}:\n{out.stdout}{out.stderr}")
    return out.stdout.split()


def device(profile_cfg: dict, cores: int) -> str:
    want = profile_cfg.get("device", "auto")
    if want.startswith("cuda") or (want == "auto" and torch.cuda.is_available()):
        return f"cuda: {torch.cuda.get_device_name(0)}"
    import platform
    return f"cpu: {platform.machine()}, {cores} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", default="config/config.yaml")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "workflow.csv"))
    ap.add_argument("--jobs", action="append", default=[], metavar="PATTERN",
                    help="the planned jobs whose names match PATTERN (kdbench plan --jobs), repeatable")
    ap.add_argument("targets", nargs="*")
    a = ap.parse_args()
    if not (a.targets or a.jobs):
        ap.error("name snakemake targets, or planned jobs with --jobs PATTERN")
    cfg = yaml.safe_load(open(ROOT / a.configfile))
    targets = list(a.targets)
    for pattern in a.jobs:
        targets += job_targets(a.configfile, pattern)
    cmd = ["snakemake", *targets, "--cores", str(a.cores), "--configfile", a.configfile]
    jobs = planned_jobs(cmd)
    commit = git_commit(ROOT)
    start = time.perf_counter()
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    wall = time.perf_counter() - start
    if rc != 0:
        sys.exit(rc)
    target = " ".join([*a.targets, *(f"jobs:{p}" for p in a.jobs)])
    row = dict(date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"), profile=cfg["profile"], target=target,
               device=device(cfg, a.cores), cores=a.cores, wall_seconds=round(wall, 1), jobs=jobs, commit=commit)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
    print(f"{row['target']}: {wall / 60:.1f} min, {jobs} jobs -> {out}")


if __name__ == "__main__":
    main()
