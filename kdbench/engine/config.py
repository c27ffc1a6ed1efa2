"""The training config of one job: its keys, their defaults, and the one validation that the workflow and `kdbench
train` share.

What this file achieves: `KEYS` states each training key once: its default, its JSON schema (type and range), what a
good value is in words, the part of the job it configures, and whether a profile may set it. `DEFAULTS`, the check of
each value and the training keys of the profile's schema (`profile_schema`) are made from it. `resolve(cfg)` fills in
`DEFAULTS` and checks every key before anything is loaded or
trained: its type and range, that the variant exists (after importing `variant_modules`) and takes exactly the
hyperparameters given, with values in range (a temperature > 0, a hard weight in [0, 1]), that the net's widths fit
the dataset, and that the validation split and the transfer set fit in the training split. A bad value raises
`ConfigError` naming the key, the value and the fix. The workflow resolves the config of every job when the
Snakefile is read, so a bad profile stops before the first job; `kdbench train` resolves its config before it
touches data or writes anything.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import jsonschema

from kdbench import registry
from kdbench.data import registry as data_registry
from kdbench.data import speech
from kdbench.engine import losses, models

PRECISIONS = ("fp32", "bf16")
MAX_JITTER = 8  # pixels of a 28x28 image; the paper's teacher uses 2


class ConfigError(ValueError):
    """A training config key has a bad value; the message names the key, the value and the fix."""


INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
STR = {"type": "string"}
PATHS = {"type": "array", "items": STR}
OR_NULL = "null"


def _nullable(schema: dict) -> dict:
    return {**schema, "type": [schema["type"], OR_NULL]}


@dataclass(frozen=True)
class Key:
    """One training key: its default, its JSON schema (the one statement of its type and range, which both
    `resolve` and the profile's schema check), what a good value is in words (the error message's fix), which part
    of the job it configures, and whether a profile's training blocks may set it (the others are the sections' to
    set: a dataset, a teacher's files, a specialist's classes)."""
    default: object
    schema: dict
    good: str
    part: str                  # data | model | optimisation | distillation | run
    profile: bool = True
    doc: str = ""
    profile_schema: dict = field(default_factory=dict)  # where a profile is held tighter than the engine


KEYS: dict[str, Key] = {
    "dataset": Key("mnist", STR, "a dataset name", "data", False),
    "model": Key("mlp", STR, "a model name", "model", doc="a name in kdbench.engine.models.MODELS (mlp)"),
    "model_params": Key({}, {"type": "object"}, "a mapping of the model family's own settings", "model",
                        doc="the model family's own settings: the keys of its PARAMS (their defaults filled in)"),
    "widths": Key([784, 800, 800, 10], {"type": "array", "items": {**INT, "minimum": 1}, "minItems": 2},
                  "a list of at least two integers >= 1", "model"),
    "dropout_input": Key(0.0, {**NUM, "minimum": 0, "exclusiveMaximum": 1}, "a number in [0, 1)", "model"),
    "dropout_hidden": Key(0.0, {**NUM, "minimum": 0, "exclusiveMaximum": 1}, "a number in [0, 1)", "model"),
    "max_norm": Key(None, _nullable({**NUM, "exclusiveMinimum": 0}), "null or a number > 0", "model"),
    "epochs": Key(10, {**INT, "minimum": 1}, "an integer >= 1", "optimisation"),
    "batch_size": Key(128, {**INT, "minimum": 1}, "an integer >= 1", "optimisation"),
    "lr": Key(0.05, {**NUM, "exclusiveMinimum": 0}, "a number > 0", "optimisation"),
    "momentum": Key(0.9, {**NUM, "minimum": 0, "exclusiveMaximum": 1}, "a number in [0, 1)", "optimisation"),
    "nesterov": Key(True, BOOL, "true or false", "optimisation"),
    "weight_decay": Key(0.0, {**NUM, "minimum": 0}, "a number >= 0", "optimisation"),
    "schedule": Key("cosine", {"enum": ["cosine", "constant"]}, "'cosine' or 'constant'", "optimisation",
                    doc="cosine (to 0 at the last step) or constant"),
    "warmup_epochs": Key(0.0, {**NUM, "minimum": 0}, "a number >= 0", "optimisation"),
    "grad_clip": Key(None, _nullable({**NUM, "exclusiveMinimum": 0}), "null or a number > 0", "optimisation",
                     doc="max L2 norm of each member's gradient"),
    "jitter": Key(0, {**INT, "minimum": 0, "maximum": MAX_JITTER}, f"an integer number of pixels in [0, {MAX_JITTER}]",
                  "data", doc="max translation in pixels (the paper's teacher: 2)"),
    "val_size": Key(10000, {**INT, "minimum": 0}, "an integer >= 0", "data",
                    doc="held out of the training set, seeded by val_seed; 0 = train on everything",
                    profile_schema={"minimum": 1}),  # the sections choose on validation
    "val_seed": Key(0, {**INT, "minimum": 0}, "an integer >= 0", "data", False),
    "val_every": Key(1, {**INT, "minimum": 1}, "an integer >= 1", "run",
                     doc="validate every N epochs and after the last (None in val_errors between); 1 with keep_best. "
                         "Training is the same whatever N: only the records' history thins out"),
    "val_speakers": Key(None, _nullable({"type": "array", "items": STR, "minItems": 1}),
                        "null or a non-empty list of speaker names", "data",
                        doc="speech only; these training speakers leave training and validation draws val_size "
                            "utterances from them alone"),
    "transfer_classes": Key(None, _nullable({"type": "array", "items": INT, "minItems": 1}),
                            "null or a non-empty list of classes", "data", False,
                            doc="classes kept in the training (transfer) set; None = all"),
    "train_fraction": Key(1.0, {**NUM, "exclusiveMinimum": 0, "maximum": 1}, "a number in (0, 1]", "data",
                          doc="seeded random fraction of the remaining training examples"),
    "fraction_seed": Key(0, {**INT, "minimum": 0}, "an integer >= 0", "data"),
    "mixup": Key(0.0, {**NUM, "minimum": 0}, "a number >= 0 (0 = off)", "data",
                 doc="alpha of mixup (Beta(alpha, alpha)); 0 = off. Each step mixes member k's batch with a shuffle "
                     "of itself by one lambda_k; the loss is the lambda-weighted sum of the terms with either label; a "
                     "teacher runs live on the mixed inputs (teacher_model)"),
    "bootstrap": Key(False, BOOL, "true or false", "data",
                     doc="bagging: each member trains on its own resample (with replacement, seeded by its seed) of "
                         "the transfer set"),
    "variant": Key("hard", STR, "the name of a registered KD variant", "distillation"),
    "variant_params": Key({}, {"type": "object"}, "a mapping of the variant's hyperparameters", "distillation"),
    "variant_modules": Key([], PATHS, "a list of Python file paths", "distillation", False,
                           doc="Python files that register extra KD variants (kdbench.engine.losses.load_modules)"),
    "extensions": Key([], PATHS, "a list of Python file paths", "run", False,
                      doc="Python files that register the job's dataset or model (kdbench.registry.load_files)"),
    "teacher_logits": Key(None, _nullable(STR), "null or the path of a teacher-logits cache", "distillation", False,
                          doc="path of a cached (M, N_train, C) tensor from `teacher_logits`"),
    "teacher_pairing": Key("ensemble", {"enum": ["ensemble", "paired", "grouped"]},
                           "'ensemble', 'paired' or 'grouped'", "distillation", False,
                           doc="ensemble: each member distills from all M teacher members; paired: member k from k; "
                               "grouped: M = K*G, member k from teacher members k*G .. k*G+G-1"),
    "teacher_model": Key(None, _nullable(STR), "null or the path of the teacher's model.pt", "distillation", False,
                         doc="path of the teacher's model.pt, for variants that learn from its features"),
    "teacher_members": Key(None, _nullable({"type": "array", "items": INT}), "null or a list of member positions",
                           "distillation", False,
                           doc="which teacher_model member teaches each seed (default: 0, 1, ...)"),
    "keep_best": Key(False, BOOL, "true or false", "run",
                     doc="end with each member's best-validation epoch (early stopping) instead of its last"),
    "class_subset": Key(None, _nullable({"type": "array", "items": INT, "minItems": 1}),
                        "null or a non-empty list of classes", "data", False,
                        doc="specialist: these classes keep their own outputs, all others share a dustbin output"),
    "subset_fraction": Key(None, _nullable({**NUM, "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
                           "null or a number in (0, 1)", "data", False,
                           doc="specialist: share of each epoch drawn from class_subset (the rest sampled afresh)"),
    "init_from": Key(None, _nullable(STR), "null or the path of a model.pt", "model", False,
                     doc="path of a model.pt whose members initialize this one (all but the output layer)"),
    "init_members": Key(None, _nullable({"type": "array", "items": INT}), "null or a list of member positions",
                        "model", False, doc="which member of init_from starts each seed (default: 0, 1, ...)"),
    "eval_batch_size": Key(4096, {**INT, "minimum": 1}, "an integer >= 1", "run"),
    "check_every": Key(50, {**INT, "minimum": 1}, "an integer >= 1", "run", doc="steps between non-finite loss checks"),
    "precision": Key("fp32", {"enum": list(PRECISIONS)}, "'fp32' or 'bf16'", "optimisation",
                     doc="bf16: the nets' forward and backward under bfloat16 autocast, with fp32 master weights, "
                         "optimizer state, losses and evaluation (results/bench/engine.csv measures it)"),
}
DEFAULTS = {name: key.default for name, key in KEYS.items()}
PARTS = ("data", "model", "optimisation", "distillation", "run")
assert all(key.part in PARTS for key in KEYS.values())

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


def profile_schema() -> dict:
    """The JSON schema properties of the keys a profile's training blocks may set: `$defs/train` of
    workflow/schemas/config.schema.yaml is made from `KEYS` here, not written beside it."""
    return {name: {**key.schema, **key.profile_schema, **({"description": key.doc} if key.doc else {})}
            for name, key in KEYS.items() if key.profile}


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
