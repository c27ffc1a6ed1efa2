"""The job plan: one function turns a profile into every training job it runs, each with its exact config.

What this file achieves: `jobs(cfg)` lists every training job of a profile known before anything runs (all but the
specialists, whose number the clusters decide; their generalists are planned): its name (its folder under
`results/<profile>/runs/`, see `kdbench.layout`), the seeds it trains together, its dataset, and its complete `kdbench
train` config with the teacher files it reads filled in, plus the files it waits for (cached teacher logits, a teacher
model for feature variants, a temperature chosen on validation). The rules take each job's params from here and nothing
else, so a job reruns exactly when its own config changes: adding a variant adds its jobs and leaves every other job
alone, a number that only a table uses reruns no training. The job writes its resolved config beside its outputs
(`config.json`) before it trains. `kdbench plan` prints the plan.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kdbench import layout, registry, sections
from kdbench.data import registry as data_registry
from kdbench.engine import losses, models
from kdbench.engine.config import DEFAULTS, resolve
from kdbench.sections import ensembles, specialists


@dataclass(frozen=True)
class Job:
    name: str                      # folder under runs/ (kdbench.layout)
    seeds: tuple[int, ...]
    dataset: str
    config: dict                   # what `kdbench train --config-json` gets
    teacher: str | None = None     # the file of cached teacher logits it reads
    teacher_model: str | None = None
    temperature_from: str | None = None  # a chosen temperature set before training (variants that take one)
    modules: tuple[str, ...] = field(default_factory=tuple)

    def inputs(self) -> list[str]:
        """The files (besides the dataset) that must exist before the job starts."""
        return [p for p in (self.teacher, self.teacher_model, self.temperature_from) if p] + list(self.modules)


def _job(name: str, seeds, config: dict, temperature_from: str | None = None) -> Job:
    config = with_extensions(config)
    return Job(name, tuple(seeds), config["dataset"], config, config.get("teacher_logits"),
               config.get("teacher_model"), temperature_from,
               tuple(config.get("variant_modules", [])) + tuple(config.get("extensions", [])))


def with_extensions(config: dict) -> dict:
    """The config with `extensions` naming the user files that register its dataset and model, if any: a job
    depends on those files alone (a built-in dataset and model add nothing, so the config stays as it was)."""
    files = [f for f in (data_registry.DATASETS.source(config["dataset"]),
                         models.MODELS.source(config.get("model", "mlp"))) if f]
    return {**config, "extensions": sorted(set(files))} if files else config


def jobs(cfg: dict) -> dict[str, Job]:
    """Every training job of the profile known before any runs, by name (after importing the profile's user
    files: a user's section plans jobs too)."""
    registry.load_files(cfg.get("extensions", []))
    out: dict[str, Job] = {}
    specs = [spec for section in sections.modules() for spec in section.jobs(cfg)]
    for job in (_job(s.name, s.seeds, s.config, s.temperature_from) for s in specs):
        if job.name in out and out[job.name] != job:
            raise ValueError(f"two different jobs are both named {job.name!r}")
        out[job.name] = job
    return out


TRAIN_RULE = "train"  # the training rule's name for the profile's seeds, and the folder of every training job's log
                      # and benchmark (logs/train/, benchmarks/train/), whichever seed list's rule ran it


def train_rules(cfg: dict, planned: dict[str, Job]) -> dict[str, list[int]]:
    """The workflow's training rules, by name, each with the seed list of the jobs it trains: a rule's outputs name
    every seed's record, so one rule serves one list. The profile's seeds are `train`; the ensembles' S x M members,
    the ensembles section's systems and the specialists' generalists keep the names the SLURM profile sets
    resources by; any other list of the plan (a user section's) gets a numbered name. Lists no job uses get none."""
    named = {TRAIN_RULE: cfg["seeds"], "train_members": ensembles.ensemble_seeds(cfg),
             "train_ensembles": ensembles.seeds(cfg), "train_generalists": specialists.seeds(cfg)}
    out: dict[str, list[int]] = {}
    for name, seeds in [*named.items(), *((None, j.seeds) for j in planned.values())]:
        if list(seeds) not in out.values():
            out[name or f"train_{len(out)}"] = list(seeds)
    used = {tuple(j.seeds) for j in planned.values()}
    return {name: seeds for name, seeds in out.items() if tuple(seeds) in used}


def bound_config(config: dict, where: str, temperature_from: Path | str | None = None,
                 cluster: list[int] | None = None) -> dict:
    """A job's training config with what is known only after planning bound in, resolved: a specialist's cluster
    (its classes and a dustbin as outputs) and the temperature chosen on validation (`temperature_from`, for a
    variant that takes one). The one place both happen: `kdbench train` calls it before training, `kdbench check`
    to judge a record against the plan."""
    if cluster is not None:
        config = specialists.with_cluster({**DEFAULTS, **config}, cluster)
    cfg = resolve(config, where=where)
    if temperature_from and "temperature" in losses.get(cfg["variant"]).defaults:
        chosen = json.loads(Path(temperature_from).read_text())["temperature"]
        cfg["variant_params"] = {**cfg["variant_params"], "temperature": chosen}
    return cfg


def teachers(cfg: dict, planned: dict[str, Job]) -> list[str]:
    """Jobs of the plan `planned` whose logits on the training split are cached for students
    (`runs/<job>/train_logits.pt`), and the generalists whose specialists learn from their soft targets."""
    runs = layout.runs(cfg["profile"])
    wanted = [job.teacher for job in planned.values() if job.teacher]
    wanted += [p for ds in specialists.datasets(cfg) for p in [specialists.teacher_logits(cfg, ds)] if p]
    return sorted({str(Path(p).parent.relative_to(runs)) for p in wanted if Path(p).name == "train_logits.pt"})


def specialist_example(cfg: dict, dataset: str) -> dict:
    """A specialist's config for a two-class cluster, to check a profile before its clusters exist."""
    return specialists.train_config(cfg, dataset, [0, 1])


def dataset_files(data_root: Path | str, dataset: str) -> list[Path]:
    """The files a job on `dataset` reads (its registry entry's `files`: the verified image files, the speech
    split's feature cache, ...)."""
    return data_registry.get(dataset).files(Path(data_root))
