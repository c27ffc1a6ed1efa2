"""A profile (config/*.yaml) read, checked against the workflow's schema and planned, with short messages.

What this file achieves: `load(path)` reads a profile as YAML 1.2 reads numbers (`lr: 5e-2` is the number 0.05, not
the string YAML 1.1 makes of it); `numbers(cfg)` does the same for a config snakemake already read; `validate(cfg)`
checks it against `workflow/schemas/config.schema.yaml` and raises `ProfileError` with one line per problem, naming
the key's path, what is wrong and, for a misspelt key, the known keys beside it (not the whole schema and config,
which is what snakemake's own validation prints); `check(cfg)` adds the job plan with every job's training config
resolved by `kdbench.engine.config.resolve` (`planned_jobs`, the workflow's job plan). The Snakefile validates and
plans with these; `kdbench plan` calls `check`, which does both.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

import jsonschema
import yaml

from kdbench import plan, registry, sections
from kdbench.data import registry as data_registry
from kdbench.engine import config, losses, train
from kdbench.sections import ensembles, specialists, variants

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
# YAML 1.2's floats that YAML 1.1 (PyYAML) reads as strings: no dot, or an exponent without a sign
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


class ProfileError(ValueError):
    """A profile that the workflow cannot run; the message names each bad key and the fix."""


def numbers(obj):
    """A copy of a read config with YAML 1.2 floats such as '5e-2' as numbers."""
    if isinstance(obj, dict):
        return {k: numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [numbers(v) for v in obj]
    if isinstance(obj, str) and _FLOAT.match(obj.strip()):
        return float(obj)
    return obj


def load(path: Path | str) -> dict:
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ProfileError(f"cannot read the profile {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise ProfileError(f"{path}: a profile is a mapping of keys (profile, seeds, mnist, ...), got "
                           f"{type(cfg).__name__}")
    return numbers(cfg)


def _schema() -> dict:
    """The schema file, with the training keys of `$defs/train` made from kdbench.spec.KEYS, and a property
    for each registered section it does not know (a user's section: its
    `SCHEMA`, then required, else any mapping), so that such a section's block of the profile is checked by its own
    schema."""
    schema = yaml.safe_load(SCHEMA.read_text())
    schema["$defs"]["train"]["properties"] = {**config.profile_schema(), **schema["$defs"]["train"]["properties"]}
    for name in sections.names():
        if name not in schema["properties"]:
            section = sections.get(name)
            schema["properties"][name] = getattr(section, "SCHEMA", {"type": "object"})
            schema["required"] += [name] if hasattr(section, "SCHEMA") else []
    return schema


def _load_extensions(cfg: dict) -> None:
    """Import the profile's user files (KD variants, datasets, models, sections), so that what they register is
    known to the schema and the plan; a file that is missing or fails stops here, naming it."""
    for key in ("variant_modules", "extensions"):
        files = cfg.get(key, [])
        if not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
            continue  # the schema names the bad value
        try:
            registry.load_files(files, key)
        except (OSError, SyntaxError, ImportError, ValueError) as e:
            doc = "docs/adding-a-variant.md" if key == "variant_modules" else "docs/where-things-live.md, \"Recipes\""
            raise ProfileError(f"config: {key}: {e}. Fix: a path relative to the directory you run from (see "
                               f"{doc})") from None


def with_defaults(cfg: dict) -> dict:
    """The config with the schema's top-level defaults for the keys it leaves out (what snakemake's `validate`
    would set)."""
    props = _schema()["properties"]
    return {**{k: v["default"] for k, v in props.items() if "default" in v and k not in cfg}, **cfg}


def _where(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _known(error) -> list[str]:
    props = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    return sorted(props)


def _message(error) -> str:
    where = _where(error)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(_known(error)))
        hints = []
        for key in extra:
            close = difflib.get_close_matches(key, _known(error), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return (f"{where}: unknown key(s) {', '.join(hints)}. Fix: use only the known keys "
                f"{', '.join(_known(error))}")
    if error.validator == "required":
        return f"{where}: {error.message}. Fix: add it (config/config.yaml has every key, with comments)"
    value = repr(error.instance)
    if len(value) > 60:
        value = value[:57] + "..."
    return (f"{where}: {value} is wrong: {error.message if len(error.message) < 160 else error.validator}"
            f"{_fix(error)}")


def _fix(error) -> str:
    """A fix line for a value of the wrong type or out of range, from what the schema asks."""
    rule = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "type":
        want = rule.get("type")
        want = " or ".join(want) if isinstance(want, list) else want
        example = {"number": " (e.g. 0.05)", "integer": " (e.g. 40)", "boolean": " (true or false)",
                   "array": " (a list, e.g. [0, 1])", "string": ""}.get(want, "")
        return f". Fix: write {'an' if str(want)[0] in 'aeiou' else 'a'} {want} here{example}"
    if error.validator == "minItems":
        return f". Fix: list at least {rule.get('minItems')} item(s), e.g. [0, 1]"
    if error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        bounds = ", ".join(f"{k} {rule[k]}" for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
                           if k in rule)
        return f". Fix: a value with {bounds}"
    if error.validator == "enum":
        return f". Fix: one of {rule.get('enum')}"
    return ""


def validate(cfg: dict) -> None:
    """Raise ProfileError listing every schema violation of `cfg`, one short line each (after importing its user
    files, whose sections' blocks the schema then checks too)."""
    _load_extensions(cfg)
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [_message(e) for e in errors[:10]]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise ProfileError("the profile does not fit the schema (workflow/schemas/config.schema.yaml):\n  "
                           + "\n  ".join(lines) + more)


def planned_jobs(cfg: dict) -> dict:
    """Build the job plan of a profile that `validate` passed (which imported its user files) and resolve every job's
    training config now, with the same validation `kdbench train` uses, so a bad value, variant or variant parameter
    stops the workflow (or `kdbench plan`) before any job, naming the job and key; returns the plan's jobs. The
    workflow's `PLAN`."""
    for row in ensembles.datasets(cfg):
        data = ensembles.data_of(cfg, row)
        if data not in data_registry.DATASETS:
            fix = (f"set `data` to one of {data_registry.names()}" if data == row
                   else f"choose `data` from {data_registry.names()}")
            raise ValueError(f"config: ensembles.datasets.{row}: {data!r} is not a registered dataset. Fix: {fix}, "
                             f"or list the file that registers it under extensions")
    if cfg["variant_experiments"]["mnist_bestT_width"] not in cfg["mnist"]["sweep"]["widths"]:
        raise ValueError(f"config: variant_experiments.mnist_bestT_width must be one of the sweep's widths "
                         f"{cfg['mnist']['sweep']['widths']}")
    for name in cfg["variants"]:
        if name not in losses.VARIANTS:
            close = difflib.get_close_matches(name, losses.VARIANTS.names(), n=1)
            raise ValueError(f"config: variants: unknown KD variant {name!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f". Fix: one of {losses.VARIANTS.names()}, or register your own in a file listed "
                               f"under variant_modules (docs/adding-a-variant.md)")
    for name, params in cfg.get("variant_params", {}).items():
        if name not in cfg["variants"]:
            raise ValueError(f"config: variant_params: {name!r} is not one of the variants run, "
                             f"{cfg['variants']}. Fix: correct the name, or add it to variants")
        try:  # named by its place in the profile, before any job that would carry it
            losses.get(name).check_params(params if isinstance(params, dict) else {})
        except ValueError as e:
            raise ValueError(f"config: variant_params.{name}: {e}. Fix: correct it under variant_params.{name} "
                             f"(its parameters and defaults: {losses.get(name).defaults})") from None
    _check_grids(cfg)
    _check_scope(cfg)
    for ds in specialists.datasets(cfg):
        if ds not in ensembles.datasets(cfg):
            raise ValueError(f"config: specialists.datasets: {ds!r} has no generalist; add it to ensembles.datasets")
        model = specialists.generalist_config(cfg, ds).get("model", "mlp")
        if model != "mlp":
            raise ValueError(f"config: specialists.datasets.{ds}: its generalist is a {model!r}, and the specialists "
                             f"start from an MLP generalist's hidden layers (they copy its weights). Fix: set `model: "
                             f"mlp` and `model_params: {{}}` under specialists.datasets.{ds}.generalist, or leave {ds} "
                             f"out of the specialists")
        train.resolve(plan.specialist_example(cfg, ds), where=f"config: job 'specialists/{ds}/spec0'")
    jobs = plan.jobs(cfg)
    for job in jobs.values():
        train.resolve(job.config, where=f"config: job {job.name!r}")
    return jobs


def _check_beside_hinton(cfg: dict, key: str, name: str) -> None:
    """A per-variant key of the profile (`key`) names a variant that is run beside hinton."""
    if name not in cfg["variants"] or name == "hinton":
        raise ValueError(f"config: {key}: {name!r} is not one of the variants run beside hinton, "
                         f"{[v for v in cfg['variants'] if v != 'hinton']}. Fix: correct the name, or add it to "
                         f"variants")


def _check_scope(cfg: dict) -> None:
    """`variant_scope`: each a variant that is run beside hinton (hinton, the reference, runs everywhere), each place
    an experiment's name or a table group of the suite's experiments."""
    exps = variants.experiments(cfg)
    places = list(dict.fromkeys([e.table for e in exps] + [e.name for e in exps]))
    for name, scope in cfg.get("variant_scope", {}).items():
        _check_beside_hinton(cfg, "variant_scope", name)
        for place in scope:
            if place not in places:
                close = difflib.get_close_matches(place, places, n=1)
                raise ValueError(f"config: variant_scope.{name}: {place!r} is no distillation experiment of this "
                                 f"profile" + (f" (did you mean {close[0]!r}?)" if close else "")
                                 + f". Fix: name experiments or table groups from {places}")


def _check_grids(cfg: dict) -> None:
    """`variant_grids`: each a variant that is run (not hinton, whose temperature its sections choose), each setting
    a valid set of its parameters (named by its place in the profile)."""
    for name in cfg.get("variant_grids", {}):
        _check_beside_hinton(cfg, "variant_grids", name)
        for point in variants.grid(cfg, name):
            try:
                losses.get(name).check_params({**cfg.get("variant_params", {}).get(name, {}), **point})
            except ValueError as e:
                raise ValueError(f"config: variant_grids.{name}: {e}. Fix: correct it under variant_grids.{name} "
                                 f"(its parameters and defaults: {losses.get(name).defaults})") from None


def check(cfg: dict) -> dict:
    """`validate` and then `planned_jobs`: everything the workflow checks when it starts (what `kdbench plan` runs)."""
    validate(cfg)
    return planned_jobs(cfg)
