"""The section registry: the paper's sections, one module each, in the order the summary lists them.

What this file achieves: `NAMES` lists the sections and `get(name)` gives the module; the plan, the CLI, the
Snakefile's targets, includes and summary, and the variants loop over them instead of naming them. A section module
has:
- `jobs(cfg) -> [JobSpec]`: every training job it plans (name, seeds, config, a chosen temperature it reads);
- `distillation_experiments(cfg) -> [Experiment]` (optional): its experiments that every KD variant is re-run in;
- `OUTPUTS`: the files under `results/<profile>/` that `rule all` asks of it; `SUMMARY`: whether it writes
  `<name>_summary.csv` and `<name>_provenance.csv` parts of the suite's summary;
- `write(cfg, runs, out_dir, paper=..., root=..., clusters=...)`: its tables and figures (`kdbench aggregate`);
- its rules in `workflow/rules/<name>.smk`, an `aggregate_<name>` rule among them.
(`mnist`: section 3 with `bias`; `ensembles`: sections 4 and 6; `specialists`: section 5; `variants`: every KD
variant in every distillation experiment.)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

NAMES = ("mnist", "variants", "ensembles", "specialists")


def get(name: str):
    if name not in NAMES:
        raise KeyError(f"unknown section {name!r}; known: {list(NAMES)}")
    return importlib.import_module(f"kdbench.sections.{name}")


def modules() -> list:
    return [get(n) for n in NAMES]


@dataclass(frozen=True)
class JobSpec:
    """A training job as a section plans it (kdbench.plan turns it into a `Job` with its input files)."""
    name: str
    seeds: tuple[int, ...]
    config: dict
    temperature_from: str | None = None


@dataclass(frozen=True)
class Experiment:
    """One distillation experiment that every variant is run in."""
    name: str
    table: str             # which group of the variants tables it is reported in
    base: dict             # the experiment's `hinton` student config, teacher paths filled in
    teacher_logits: str    # the cached logits a teacher="teacher" variant reads
    teacher_model: str     # the teacher's model.pt, for feature variants
    teacher_members: list | None  # which teacher_model member teaches each seed
    hinton_run: str | None = None  # a run of the sections that is this experiment's hinton student
    temperature_from: str | None = None  # the temperature chosen on validation, read when the job starts
    choice: dict | None = None  # what that choice compares: the sweep's runs of {"width"}, or {"dataset"}'s nets
    metric: str = "test_errors"  # "test_errors" (count) or "test_accuracy_pct"
    seeds: tuple[int, ...] = ()  # the seeds its students train on: its section's
