"""The one validation of a job's training config, which the workflow and `kdbench train` share.

What this file achieves: the keys themselves (each one's default, JSON schema, fix text, part and whether a profile may
set it) are the fields of the typed spec, `kdbench.spec` (`KEYS`, `DEFAULTS` and the profile schema are read off it and
named here too). `resolve(cfg)` fills in `DEFAULTS` and checks every key before anything is loaded or trained: its type
and range, that the variant exists (after importing `variant_modules`) and takes exactly the hyperparameters given,
with values in range (a temperature > 0, a hard weight in [0, 1]), that the net's widths fit the dataset, and that the
validation split and the transfer set fit in the training split. A bad value raises `ConfigError` naming the key, the
value and the fix. `resolve_spec(cfg)` is the same check returning the typed `TrainSpec` the engine trains from. The
workflow resolves the config of every job when the Snakefile is read, so a bad profile stops before the first job;
`kdbench train` resolves its config before it touches data or writes anything.
"""
from __future__ import annotations

import numbers

import jsonschema

from kdbench import registry
from kdbench.data import registry as data_registry
from kdbench.data import speech
from kdbench.engine import losses, models
from kdbench.spec import DEFAULTS, KEYS, TrainSpec, profile_schema  # noqa: F401  (kdbench.engine.config.KEYS, ...)


class ConfigError(ValueError):
    """A training config key has a bad value; the message names the key, the value and the fix."""


# JSON schema types as the engine means them: an integer is an int (not 1.0, not True), a list may be a tuple
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many({
    "integer": lambda _, v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    "array": lambda _, v: isinstance(v, (list, tuple)),
})
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)
_VALID = {name: _Validator(key.schema) for name, key in KEYS.items()}


def good(name: str, value) -> bool:
    """Whether `value` fits training key `name`'s schema."""
    return _VALID[name].is_valid(value)


# keys that are each valid alone but not together: (the clash, what is wrong and the fix)
CLASHES = [
    (lambda c: c["subset_fraction"] is not None and c["class_subset"] is None,
     "subset_fraction needs class_subset. Fix: set class_subset or remove subset_fraction"),
    (lambda c: c["nesterov"] and c["momentum"] == 0,
     "nesterov needs momentum > 0 (torch's SGD refuses it). Fix: set momentum above 0 or nesterov: false"),
    (lambda c: c["bootstrap"] and c["class_subset"] is not None,
     "bootstrap does not apply to a specialist (class_subset), whose epochs are drawn from its classes. Fix: remove "
     "bootstrap or class_subset"),
    (lambda c: c["keep_best"] and not c["val_size"], "keep_best needs a validation split. Fix: set val_size > 0"),
    (lambda c: c["keep_best"] and c["val_every"] != 1,
     "keep_best compares every epoch on validation. Fix: set val_every: 1 or remove keep_best"),
]


def _check_val_speakers(out: dict, where: str) -> None:
    """val_speakers names some training speakers of a speech split, with more utterances than val_size."""
    if out["dataset"] not in speech.SPLITS:
        raise ConfigError(f"{where}: val_speakers applies to speech splits only, not {out['dataset']!r}. Fix: remove "
                          f"val_speakers")
    train_speakers = speech.train_speakers(out["dataset"])
    bad = [s for s in out["val_speakers"] if s not in train_speakers]
    if bad or len(set(out["val_speakers"])) == len(train_speakers):
        raise ConfigError(f"{where}: val_speakers {out['val_speakers']} must name some, not all, of the training "
                          f"speakers of {out['dataset']}: {train_speakers}. Fix: choose from those")
    n = speech.train_utterances(out["dataset"], out["val_speakers"])
    if out["val_size"] >= n:
        raise ConfigError(f"{where}: val_size {out['val_size']} must be below the {n} utterances of "
                          f"{out['val_speakers']} it is drawn from. Fix: set val_size below {n}")


def _dataset_and_model(out: dict, where: str):
    """Import the job's `extensions`, check that its dataset and model are registered; the dataset's entry."""
    try:
        registry.load_files(out["extensions"])
    except (OSError, SyntaxError, ImportError, ValueError) as e:
        raise ConfigError(f"{where}: extensions: {e}") from None
    if out["model"] not in models.MODELS:
        raise ConfigError(f"{where}: model: unknown model {out['model']!r}. Fix: choose one of "
                          f"{models.MODELS.names()}, or list the file that registers it under extensions")
    try:
        out["model_params"] = models.family_params(out["model"], out["model_params"])
    except ValueError as e:
        raise ConfigError(f"{where}: model_params: {e}") from None
    if out["dataset"] not in data_registry.DATASETS:
        raise ConfigError(f"{where}: dataset: unknown dataset {out['dataset']!r}. Fix: choose one of "
                          f"{data_registry.names()}, or list the file that registers it under extensions")
    return data_registry.get(out["dataset"])


def resolve(cfg: dict, where: str = "training config") -> dict:
    """Defaults filled in and every key checked (see the module docstring); raises ConfigError."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: expected a mapping of training keys, got {type(cfg).__name__}")
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"{where}: unknown training config key(s) {sorted(unknown)}. Fix: use only the known keys "
                          f"{sorted(DEFAULTS)}")
    out = {**DEFAULTS, **cfg}
    for key, spec in KEYS.items():
        if not good(key, out[key]):
            raise ConfigError(f"{where}: {key} must be {spec.good}, got {out[key]!r}. Fix: set {key} to {spec.good}")

    entry = _dataset_and_model(out, where)
    dims = (entry.input_dim, entry.num_classes)
    n_classes = dims[1]
    for key in ("transfer_classes", "class_subset"):
        if out[key] is not None and not all(0 <= c < n_classes for c in out[key]):
            raise ConfigError(f"{where}: {key} {out[key]} names classes outside 0..{n_classes - 1} of "
                              f"{out['dataset']}. Fix: use class numbers from 0 to {n_classes - 1}")
    if out["class_subset"] is not None:
        dims = (dims[0], len(out["class_subset"]) + 1)  # the subset's classes plus the dustbin
    if (out["widths"][0], out["widths"][-1]) != dims:
        raise ConfigError(f"{where}: widths {out['widths']} do not fit {out['dataset']}: its nets need widths "
                          f"[{dims[0]}, ..., {dims[1]}]. Fix: start widths with {dims[0]} and end them with {dims[1]}")
    units, unit_name = entry.train_size, entry.unit
    if out["val_speakers"] is not None:
        _check_val_speakers(out, where)
    elif out["val_size"] >= units:
        raise ConfigError(f"{where}: val_size {out['val_size']} leaves no training data: the {out['dataset']} "
                          f"training split has {units} {unit_name}. Fix: set val_size below {units}")
    for clash, message in CLASHES:
        if clash(out):
            raise ConfigError(f"{where}: {message}")

    try:
        losses.load_modules(out["variant_modules"])
    except (OSError, SyntaxError, ImportError, ValueError) as e:
        raise ConfigError(f"{where}: variant_modules: {e}") from None
    try:
        variant = losses.get(out["variant"])
        variant.check_params(out["variant_params"])
    except KeyError as e:
        raise ConfigError(f"{where}: variant: {e.args[0]}. Fix: use a registered variant, or list the file that "
                          f"registers it under variant_modules") from None
    except ValueError as e:
        raise ConfigError(f"{where}: variant_params: {e}. Fix: correct the value under variant_params") from None
    return out


def resolve_spec(cfg: dict | TrainSpec, where: str = "training config") -> TrainSpec:
    """`resolve` as the typed spec the engine trains from (a spec is checked as its flat config is)."""
    return TrainSpec.from_config(resolve(cfg.config() if isinstance(cfg, TrainSpec) else cfg, where))
