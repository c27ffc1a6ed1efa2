"""The section registry: the paper's sections, one module each, in the order the summary lists them, and any
section a user's file adds.

What this file achieves: `names()` lists the sections and `get(name)` gives each; the plan, the CLI, the
Snakefile's targets, rules and summary, the profile's schema and the variants loop over them instead of naming them.
A built-in section is a module of this package with an `ORDER` (its place in the summary), found by looking and
registered in `SECTIONS`, the one `kdbench.registry.Registry` of sections; a user's section is an object (a class,
say) registered there with `@register` in a file listed under the profile's `extensions`.
A section has:
- `NAME` (a user's section; a module's name is its file's) and `jobs(cfg) -> [JobSpec]`: every training job it plans;
- `distillation_experiments(cfg) -> [Experiment]` (optional): its experiments that every KD variant is re-run in (a
  group of its own in the variants tables, titled by the experiments' `title`, where `table` is a new group); an
  experiment whose temperature is chosen on validation names its `section` and `choice`, and that section has
  `choice_spec(cfg, choice)`, `choice_inputs(spec, runs)` and `choose_temperature(spec, runs)` (MNIST's sweep rule,
  the ensembles' one-standard-error rule): the variants section runs the choice without knowing the rule;
- `OUTPUTS`: the files under `results/<profile>/` that `rule all` asks of it; `SUMMARY`: whether it writes
  `<name>_summary.csv` and `<name>_provenance.csv` parts of the suite's summary;
- `write(cfg, runs, out_dir, paper=..., root=..., clusters=...)`: its tables and figures (`kdbench aggregate`);
- `SCHEMA` (optional): the JSON schema of its block of the profile, `cfg[name]`, for a section the schema file does
  not know; `CAPTION` (optional): the `--report` caption of its outputs; `aggregate_inputs(cfg, runs)` (optional):
  the files its tables read besides the run records of its jobs (the default).
Its rules: `workflow/rules/<name>.smk` when it has rules of its own (an `aggregate_<name>` among them: the four
built-ins), else the `aggregate_<name>` rule that `workflow/rules/sections.smk` makes from the above.
(`mnist`: section 3 with `bias`; `ensembles`: sections 4 and 6; `specialists`: section 5; `variants`: every KD
variant in every distillation experiment.)
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass

from kdbench import layout
from kdbench.registry import Registry

# every section, the built-ins (registered by `_builtins`, in their ORDER) and users' (with the file of each)
SECTIONS = Registry("section")


@functools.cache
def _builtins() -> list[str]:
    """Import this package's section modules (those with an ORDER) and register them, in their ORDER; their names."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "ORDER"):
            found.append((module.ORDER, info.name, module))
    for _, name, module in sorted(found, key=lambda f: f[0]):
        SECTIONS.add(name, module, builtin=True)
    return [name for _, name, _ in sorted(found, key=lambda f: f[0])]


def register(section):
    """Add a user's section (an object with `NAME`, `jobs`, `OUTPUTS`, `SUMMARY`, `write`, ...); returns it, so that
    it decorates a class."""
    name = getattr(section, "NAME", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a section needs a NAME that is an identifier, got {name!r}")
    if name in _builtins():
        raise ValueError(f"a section named {name!r} is already registered (by kdbench); choose another name")
    missing = [a for a in ("jobs", "OUTPUTS", "SUMMARY", "write") if not hasattr(section, a)]
    if missing:
        raise ValueError(f"section {name!r} lacks {', '.join(missing)} (see kdbench/sections/__init__.py)")
    SECTIONS.add(name, section)
    return section


def names() -> list[str]:
    """The built-ins in their ORDER, then users' sections by name."""
    builtins = _builtins()
    return [*builtins, *(n for n in SECTIONS.names() if n not in builtins)]


def get(name: str):
    if name not in _builtins() and name not in SECTIONS:
        raise KeyError(f"unknown section {name!r}; known: {names()}. Fix: a user's section comes from a "
                       f"file listed under the profile's `extensions`")
    return SECTIONS.get(name)


def modules() -> list:
    return [get(n) for n in names()]


def source(name: str) -> str | None:
    """The user file that registered section `name` (None for a built-in)."""
    _builtins()
    return SECTIONS.source(name)


def aggregate_inputs(name: str, cfg: dict, runs) -> list:
    """What a section's tables read: the run records of every seed of its jobs, and its `aggregate_inputs`."""
    section = get(name)
    files = [layout.metrics(runs, spec.name, s) for spec in section.jobs(cfg) for s in spec.seeds]
    return files + list(section.aggregate_inputs(cfg, runs) if hasattr(section, "aggregate_inputs") else [])


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
    choice: dict | None = None  # what that choice compares (the owning section's own keys: MNIST's {"width"})
    section: str | None = None  # the section that plans it and, with `choice`, makes its temperature choice: its
    #                             `choice_spec(cfg, choice)`, `choice_inputs(spec, runs)`, `choose_temperature(spec,
    #                             runs)`
    metric: str = "test_errors"  # "test_errors" (count) or "test_accuracy_pct"
    seeds: tuple[int, ...] = ()  # the seeds its students train on: its section's
    title: str | None = None  # its group's title in the variants tables, for a group kdbench does not know
