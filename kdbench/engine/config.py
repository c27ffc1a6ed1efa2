"""The training config of one job: its defaults, and the one validation that the workflow and `kdbench train` share.

What this file achieves: `resolve(cfg)` fills in `DEFAULTS` and checks every key before anything is loaded or
trained: its type and range, that the variant exists (after importing `variant_modules`) and takes exactly the
hyperparameters given, with values in range (a temperature > 0, a hard weight in [0, 1]), that the net's widths fit
the dataset, and that the validation split and the transfer set fit in the training split. A bad value raises
`ConfigError` naming the key, the value and the fix. The workflow resolves the config of every job when the
Snakefile is read, so a bad profile stops before the first job; `kdbench train` resolves its config before it
touches data or writes anything.
"""
from __future__ import annotations

import numbers

from kdbench import registry
from kdbench.data import registry as data_registry
from kdbench.data import speech
from kdbench.engine import losses, models

DEFAULTS = dict(
    dataset="mnist",
    model="mlp",                # a name in kdbench.engine.models.MODELS
    model_params={},            # the model family's own settings: the keys of its PARAMS (their defaults filled in)
    widths=[784, 800, 800, 10],
    dropout_input=0.0,
    dropout_hidden=0.0,
    max_norm=None,
    epochs=10,
    batch_size=128,
    lr=0.05,
    momentum=0.9,
    nesterov=True,
    weight_decay=0.0,
    schedule="cosine",          # "cosine" (to 0 at the last step) or "constant"
    warmup_epochs=0.0,
    grad_clip=None,             # max L2 norm of each member's gradient
    jitter=0,                   # max translation in pixels (the paper's teacher: 2)
    val_size=10000,             # held out of the training set, seeded by val_seed; 0 = train on everything
    val_seed=0,
    val_every=1,                # validate every N epochs and after the last (None in val_errors between); 1 with
                                # keep_best. Training is the same whatever N: only the records' history thins out
    val_speakers=None,          # speech: these speakers leave training; validation draws val_size utterances of theirs
    transfer_classes=None,      # classes kept in the training (transfer) set; None = all
    train_fraction=1.0,         # seeded random fraction of the remaining training examples
    fraction_seed=0,
    mixup=0.0,                  # alpha of mixup (Beta(alpha, alpha)); 0 = off. Each step mixes member k's batch with
                                # a shuffle of itself by one lambda_k; the loss is the lambda-weighted sum of the terms
                                # with either label; a teacher runs live on the mixed inputs (teacher_model)
    bootstrap=False,            # each member trains on its own resample (with replacement, seeded by its seed) of the
                                # transfer set: bagging, for ensembles whose members differ in their data
    variant="hard",
    variant_params={},
    variant_modules=[],         # Python files that register extra KD variants (kdbench.engine.losses.load_modules)
    extensions=[],              # Python files that register the job's dataset or model (kdbench.registry.load_files)
    teacher_logits=None,        # path of a cached (M, N_train, C) tensor from `teacher_logits`
    teacher_pairing="ensemble",  # "ensemble": each member distills from all M teacher members; "paired": member k
                                 # from k; "grouped": M = K*G, member k from teacher members k*G .. k*G+G-1
    teacher_model=None,         # path of the teacher's model.pt, for variants that learn from its features
    teacher_members=None,       # which teacher_model member teaches each seed (default: 0, 1, ...)
    keep_best=False,            # end with each member's best-validation epoch (early stopping) instead of its last
    class_subset=None,          # specialist: these classes keep their own outputs, all others share a dustbin output
    subset_fraction=None,       # specialist: share of each epoch drawn from class_subset (the rest sampled afresh)
    init_from=None,             # path of a model.pt whose members initialize this one (all but the output layer)
    init_members=None,          # which member of init_from starts each seed (default: 0, 1, ...)
    eval_batch_size=4096,
    check_every=50,             # steps between non-finite loss checks
    precision="fp32",           # "fp32", or "bf16": the nets' forward and backward under bfloat16 autocast, with fp32
                                # master weights, optimizer state, losses and evaluation (worth it on GPUs and CPUs
                                # with native bf16 matrix units; results/bench/engine.csv measures it)
)
PRECISIONS = ("fp32", "bf16")
MAX_JITTER = 8  # pixels of a 28x28 image; the paper's teacher uses 2


class ConfigError(ValueError):
    """A training config key has a bad value; the message names the key, the value and the fix."""


def _int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _ints(v) -> bool:
    return isinstance(v, (list, tuple)) and all(_int(x) for x in v)


# key -> (test, what a good value is)
RULES = {
    "dataset": (lambda v: isinstance(v, str), "a dataset name"),
    "model": (lambda v: isinstance(v, str), "a model name"),
    "model_params": (lambda v: isinstance(v, dict), "a mapping of the model family's own settings"),
    "widths": (lambda v: _ints(v) and len(v) >= 2 and min(v) >= 1, "a list of at least two integers >= 1"),
    "dropout_input": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "dropout_hidden": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "max_norm": (lambda v: v is None or (_num(v) and v > 0), "null or a number > 0"),
    "epochs": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "lr": (lambda v: _num(v) and v > 0, "a number > 0"),
    "momentum": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "nesterov": (lambda v: isinstance(v, bool), "true or false"),
    "weight_decay": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "schedule": (lambda v: v in ("cosine", "constant"), "'cosine' or 'constant'"),
    "warmup_epochs": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "grad_clip": (lambda v: v is None or (_num(v) and v > 0), "null or a number > 0"),
    "jitter": (lambda v: _int(v) and 0 <= v <= MAX_JITTER, f"an integer number of pixels in [0, {MAX_JITTER}]"),
    "val_size": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "val_seed": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "val_every": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "val_speakers": (lambda v: v is None or (isinstance(v, list) and len(v) >= 1
                                             and all(isinstance(x, str) for x in v)),
                     "null or a non-empty list of speaker names"),
    "transfer_classes": (lambda v: v is None or (_ints(v) and len(v) >= 1), "null or a non-empty list of classes"),
    "train_fraction": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "fraction_seed": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "mixup": (lambda v: _num(v) and v >= 0, "a number >= 0 (0 = off)"),
    "bootstrap": (lambda v: isinstance(v, bool), "true or false"),
    "variant": (lambda v: isinstance(v, str), "the name of a registered KD variant"),
    "variant_params": (lambda v: isinstance(v, dict), "a mapping of the variant's hyperparameters"),
    "variant_modules": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
                        "a list of Python file paths"),
    "extensions": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
                   "a list of Python file paths"),
    "teacher_logits": (lambda v: v is None or isinstance(v, str), "null or the path of a teacher-logits cache"),
    "teacher_pairing": (lambda v: v in ("ensemble", "paired", "grouped"), "'ensemble', 'paired' or 'grouped'"),
    "teacher_model": (lambda v: v is None or isinstance(v, str), "null or the path of the teacher's model.pt"),
    "teacher_members": (lambda v: v is None or _ints(v), "null or a list of member positions"),
    "keep_best": (lambda v: isinstance(v, bool), "true or false"),
    "class_subset": (lambda v: v is None or (_ints(v) and len(v) >= 1), "null or a non-empty list of classes"),
    "subset_fraction": (lambda v: v is None or (_num(v) and 0 < v < 1), "null or a number in (0, 1)"),
    "init_from": (lambda v: v is None or isinstance(v, str), "null or the path of a model.pt"),
    "init_members": (lambda v: v is None or _ints(v), "null or a list of member positions"),
    "eval_batch_size": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "check_every": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "precision": (lambda v: v in PRECISIONS, "'fp32' or 'bf16'"),
}
assert set(RULES) == set(DEFAULTS)


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
    for key, (ok, what) in RULES.items():
        if not ok(out[key]):
            raise ConfigError(f"{where}: {key} must be {what}, got {out[key]!r}. Fix: set {key} to {what}")

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
