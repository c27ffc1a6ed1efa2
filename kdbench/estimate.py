"""How long the training a workflow run is about to do should take on this machine, from measured epochs.

What this file achieves: every finished run records the seconds of each of its epochs (`metrics.json`,
`epoch_seconds`) with its config and the machine it ran on. `measured` collects, per dataset, the epoch time and the
work of every job recorded on this kind of device (work: members x multiply-adds of one example's forward pass x the
share of the training split an epoch draws). `expected_seconds` gives each job its epochs x its work x the seconds per
unit of work of the measured jobs on its dataset near it in work (the median over those within a factor 2). The
Snakefile's `onstart` applies it to the training jobs snakemake's DAG is about to run, so the workflow says before the
first job how long it expects, and says it loudly when that is hours (the paper profile on a CPU). A dataset with no
run measured on this kind of device is estimated from runs on another of the same class (another CPU), and the
message says so; one with none at all is named as not estimated, never guessed. Epoch times are wall-clock: on a
shared or paused machine they, and so the estimate, run long.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch

from kdbench import layout
from kdbench.engine.config import DEFAULTS
from kdbench.records import cpu_model

LONG = 2 * 3600  # seconds above which the message says the run is long and how to choose a smaller one


def work(cfg: dict, members: int) -> float:
    """Units of one epoch of a job: members x multiply-adds per example x the share of the split an epoch draws."""
    widths = cfg.get("widths", [])
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return members * macs * cfg.get("train_fraction", 1.0)


def device_kind(device: str) -> str:
    """What a run record's `device` starts with on this machine for `device` (auto: CUDA when there is one)."""
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cuda"
    return f"cpu: {cpu_model()}"


def measured(results_root: Path | str, kind: str) -> dict[str, list[tuple[float, float]]]:
    """{dataset: [(units of work of one epoch, median seconds of one epoch)]}, one per job recorded under
    results_root on this kind of device."""
    out: dict[str, list[tuple[float, float]]] = {}
    for path in Path(results_root).glob("*/runs/**/metrics.json"):
        if path.parent.name != min(p.name for p in path.parent.parent.glob("seed*")):
            continue  # one record per job (its seeds share the timing)
        try:
            rec = json.loads(path.read_text())
            seconds = statistics.median(rec["epoch_seconds"])
            units = work(rec["config"], rec["members_trained_together"])
        except (OSError, ValueError, KeyError, TypeError, statistics.StatisticsError):
            continue
        if str(rec.get("device", "")).startswith(kind) and units > 0:
            out.setdefault(rec["config"]["dataset"], []).append((units, seconds))
    return out


def not_run(jobs: dict, runs_dir: Path | str) -> list:
    """The planned jobs the workflow trains in this checkout: those missing any output of their training job, a
    seed's record or the weights and logits (`model.pt`, `logits.pt`, which git does not keep: in a fresh clone every
    job, records or not, as `snakemake -n` plans it)."""
    def outputs(job):
        return [layout.model(runs_dir, job.name), layout.logits(runs_dir, job.name),
                *(layout.metrics(runs_dir, job.name, s) for s in job.seeds)]
    return [job for job in jobs.values() if not all(p.exists() for p in outputs(job))]


def recorded(todo: list, runs_dir: Path | str) -> int:
    """How many of the jobs `todo` have every seed's run record (committed results whose weights are absent)."""
    return sum(all(layout.metrics(runs_dir, j.name, s).exists() for s in j.seeds) for j in todo)


def expected_seconds(jobs: list, runs: dict[str, list[tuple[float, float]]]) -> tuple[float, list[str]]:
    """(seconds, datasets without a measured run) of training `jobs` (kdbench.plan.Job): each job's epochs x its
    work x the median seconds per unit of work of the measured jobs on its dataset within a factor 2 of its work
    (else of the closest one)."""
    seconds, unknown = 0.0, set()
    for job in jobs:
        cfg = {**DEFAULTS, **job.config}
        units = work(cfg, len(job.seeds))
        if job.dataset not in runs or units <= 0:
            unknown.add(job.dataset)
            continue
        near = [s / u for u, s in runs[job.dataset] if abs(math.log(units / u)) <= math.log(2)]
        if not near:  # no measured job within a factor 2 of its work: the closest one
            u, s = min(runs[job.dataset], key=lambda r: abs(math.log(units / r[0])))
            near = [s / u]
        seconds += cfg["epochs"] * units * statistics.median(near)
    return seconds, sorted(unknown)


def _duration(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def message(cfg: dict, todo: list, results_root: Path | str = "results", again: int = 0) -> str | None:
    """One line (two for a long run, three when `again` of the jobs retrain runs that have records) on the training
    jobs `todo` and how long they should take here, or None."""
    if not todo:
        return None
    text = _time(cfg, todo, results_root)
    if again:
        text += (f".\nkdbench: {again} of them retrain runs whose records are committed: git keeps no weights or "
                 f"logits (*.pt), which later jobs and tables read; `kdbench compare` says afterwards whether the "
                 f"regenerated tables reproduce the committed ones")
    return text


LISTED = 60  # a plan of at most this many training jobs is listed job by job


def announce(cfg: dict, todo: list) -> str | None:
    """What `kdbench plan` and the workflow (before its first job, or at the end of a dry run) print: `message` on
    the training jobs `todo`, with how many of them retrain runs whose records are committed, and for a short plan
    (a variant's students and what they need, `snakemake variant_<name>`) each job with its time."""
    text = message(cfg, todo, again=recorded(todo, layout.runs(cfg["profile"])))
    if text and len(todo) <= LISTED:
        first = [j for j in todo if not j.name.startswith("variants/")]
        then = [j for j in todo if j.name.startswith("variants/")]
        if first and then:
            text += (f"\nkdbench: first, what the variants' students need: {_listing(cfg, first)}"
                     f"\nkdbench: then the variants' students: {_listing(cfg, then)}")
        else:
            text += f"\nkdbench: the jobs: {_listing(cfg, todo)}"
    return text


def _listing(cfg: dict, jobs: list) -> str:
    return ", ".join(f"{j.name} ({t})" for j, t in per_job(cfg, jobs))


def per_job(cfg: dict, todo: list, results_root: Path | str = "results") -> list[tuple]:
    """(job, "about N min" or "no estimate") for each job of `todo`, as `message` estimates them."""
    runs = _measurements(results_root, device_kind(cfg.get("device", "auto")))
    out = []
    for job in todo:
        seconds, _, unknown = _seconds([job], *runs)
        when = "no estimate" if unknown else "under 1 min" if seconds < 60 else f"about {_duration(seconds)}"
        out.append((job, when))
    return out


def _measurements(results_root: Path | str, kind: str) -> tuple[dict, dict]:
    """The runs measured on this kind of device, and on any machine of its class (another CPU, say)."""
    return measured(results_root, kind), measured(results_root, kind.split(":")[0] + ":")


def _seconds(todo: list, here: dict, family: dict) -> tuple[float, list[str], list[str]]:
    """(seconds, datasets estimated from another machine of the same class, datasets with no measured run) of the
    jobs `todo`: the epochs measured on this kind of device (`here`), else on another machine of its class."""
    seconds, unknown = expected_seconds(todo, here)
    borrowed = []
    if unknown:  # no run on those datasets measured on this kind: runs of another machine of the same class
        more, still = expected_seconds([j for j in todo if j.dataset in unknown], family)
        seconds, borrowed, unknown = seconds + more, [d for d in unknown if d not in still], still
    return seconds, borrowed, unknown


def _time(cfg: dict, todo: list, results_root: Path | str) -> str:
    kind = device_kind(cfg.get("device", "auto"))
    family = kind.split(":")[0] + ":"
    seconds, borrowed, unknown = _seconds(todo, *_measurements(results_root, kind))
    jobs = f"kdbench: {len(todo)} training job{'s' if len(todo) != 1 else ''} of profile {cfg['profile']!r} to run"
    if unknown and len(unknown) == len({j.dataset for j in todo}):
        return f"{jobs}; no estimate: no run on {', '.join(unknown)} was measured on any {family[:-1]} here"
    text = (f"{jobs}; about {_duration(seconds)} of training (summed over jobs) on this machine ({kind}), from the "
            f"epochs measured here")
    if borrowed:
        text += (f" (the jobs on {', '.join(borrowed)} from epochs measured on another {family[:-1]}: a guess, "
                 f"machines differ)")
    if unknown:
        text += f" (not counted: the jobs on {', '.join(unknown)}: no run on it was measured on any {family[:-1]})"
    if seconds > LONG:
        smaller = ("`--configfile .test/config.yaml` (the smoke run)" if cfg["profile"] == "quick" else
                   "`--configfile config/quick.yaml` (or .test/config.yaml, the smoke run)")
        text += (f".\nkdbench: that is a long run. Ctrl-C stops it cleanly and a rerun resumes; a smaller profile is "
                 f"{smaller}")
    return text
