"""A profile (config/*.yaml) read, checked against the workflow's schema and planned, with short messages.

What this file achieves: `load(path)` reads a profile as YAML 1.2 reads numbers (`lr: 5e-2` is the number 0.05, not
the string YAML 1.1 makes of it); `numbers(cfg)` does the same for a config snakemake already read; `validate(cfg)`
checks it against `workflow/schemas/config.schema.yaml` and raises `ProfileError` with one line per problem, naming
the key's path, what is wrong and, for a misspelt key, the known keys beside it (not the whole schema and config,
which is what snakemake's own validation prints); `check(cfg)` adds the job plan with every job's training config
resolved by `kdbench.config.resolve`. The Snakefile and `kdbench plan` both call `check`.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml

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
    return yaml.safe_load(SCHEMA.read_text())


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
    return f"{where}: {value} is wrong: {error.message if len(error.message) < 160 else error.validator}"


def validate(cfg: dict) -> None:
    """Raise ProfileError listing every schema violation of `cfg`, one short line each."""
    import jsonschema
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [_message(e) for e in errors[:10]]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise ProfileError("the profile does not fit the schema (workflow/schemas/config.schema.yaml):\n  "
                           + "\n  ".join(lines) + more)


def check(cfg: dict) -> dict:
    """Validate the profile and plan it, resolving every job's training config; returns the plan's jobs."""
    from kdbench import plan, train
    validate(cfg)
    jobs = plan.jobs(cfg)
    for job in jobs.values():
        train.resolve(job.config, where=f"config: job {job.name!r}")
    return jobs
