"""Where every file of a profile lives: the one owner of the results layout, used by the rules and the sections.

    results/<profile>/
        summary.csv, provenance.csv, <section>.md, <section>_summary.csv, *.png   the tables and figures
        runs/<job>/model.pt, logits.pt, config.json, seed<S>/metrics.json        one training job (plan.Job.name)
        runs/<job>/train_logits.pt                                               a teacher's cached logits
        runs/ensembles/<dataset>/teacher_<ensemble|single>.pt                    an ensemble's cached logits
        runs/<mnist system>/bias.json                                            a bias correction
        runs/specialists/<dataset>/clusters.json                                 a dataset's specialist clusters
        variants/<experiment>_temperature.json                                   a temperature chosen on validation
        logs/<rule>/<job>.log, benchmarks/<rule>/<job>.tsv                       what each job printed and took

Every path is relative to the working directory (the checkout), so moving a checkout with its results reruns
nothing. Job names are relative paths too: `teacher`, `sweep_w30_T4`, `variants/<experiment>/<variant>`,
`ensembles/<dataset>/<system>`, `specialists/<dataset>/spec<i>`.
"""
from __future__ import annotations

from pathlib import Path


def results(profile: str) -> Path:
    return Path("results") / profile


def runs(profile: str) -> Path:
    return results(profile) / "runs"


def run(runs_dir: Path | str, job: str) -> Path:
    return Path(runs_dir) / job


def model(runs_dir: Path | str, job: str) -> Path:
    return run(runs_dir, job) / "model.pt"


def logits(runs_dir: Path | str, job: str) -> Path:
    return run(runs_dir, job) / "logits.pt"


def metrics(runs_dir: Path | str, job: str, seed: int) -> Path:
    return run(runs_dir, job) / f"seed{seed}" / "metrics.json"


def train_logits(runs_dir: Path | str, job: str) -> Path:
    """A trained job's logits on the whole training split, cached for the students it teaches."""
    return run(runs_dir, job) / "train_logits.pt"


def ensemble_teacher(runs_dir: Path | str, dataset: str, which: str) -> Path:
    """An ensemble's cached logits: every member ("ensemble") or each seed's first member ("single")."""
    return run(runs_dir, f"ensembles/{dataset}") / f"teacher_{which}.pt"


def bias(runs_dir: Path | str, system: str) -> Path:
    return run(runs_dir, system) / "bias.json"


def clusters(runs_dir: Path | str, dataset: str) -> Path:
    return run(runs_dir, f"specialists/{dataset}") / "clusters.json"


def chosen_temperature(results_dir: Path | str, experiment: str) -> Path:
    return Path(results_dir) / "variants" / f"{experiment}_temperature.json"


def log(results_dir: Path | str, rule: str, job: str) -> Path:
    return Path(results_dir) / "logs" / rule / f"{job}.log"


def benchmark(results_dir: Path | str, rule: str, job: str) -> Path:
    return Path(results_dir) / "benchmarks" / rule / f"{job}.tsv"

