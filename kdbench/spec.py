"""A training job's spec, typed and nested as the work is: data, model, optimisation, distillation, run.

What this file achieves: each part of a job is a frozen dataclass (`DataSpec`, `ModelSpec`, `OptimSpec`, `DistillSpec`,
`RunSpec`) whose fields are the job's training keys, and `TrainSpec` holds the five. Every field states its key once,
in its metadata (`key(...)`): its default, its JSON schema (type and range), what a good value is in words (the fix of
an error message), whether a profile's training blocks may set it, and its description. `KEYS` (name -> `Key`, with
the part it configures) and `DEFAULTS` are read off the dataclasses, and so is the profile schema's training block
(`profile_schema`): the schema is generated from the spec's types, never kept beside them.

A record keeps its job's config flat (`metrics.json`, `config.json`: one mapping of key -> value, as every committed
run holds it), so `TrainSpec.from_config(flat)` and `spec.config()` turn one into the other without loss: the flat
form of a spec is byte for byte the mapping the records hold. Checking a config's values against the registries (the
dataset, the model family, the variant) is `kdbench.engine.config.resolve`'s; `resolve_spec` there returns this type.
This module imports nothing of kdbench, so every layer may read a spec.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace

PRECISIONS = ("fp32", "bf16")
MAX_JITTER = 8  # pixels of a 28x28 image; the paper's teacher uses 2

INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
STR = {"type": "string"}
PATHS = {"type": "array", "items": STR}
UNIT = {**NUM, "minimum": 0, "exclusiveMaximum": 1}  # a rate in [0, 1)


def _nullable(schema: dict) -> dict:
    return {**schema, "type": [schema["type"], "null"]}


PATH_OR_NULL = _nullable(STR)
MEMBERS = _nullable({"type": "array", "items": INT})  # which members of a saved model, by position


@dataclass(frozen=True)
class Key:
    """One training key: its default, its JSON schema (the one statement of its type and range, which both
    `resolve` and the profile's schema check), what a good value is in words (the error message's fix), which part
    of the job it configures, and whether a profile's training blocks may set it (the others are the sections' to
    set: a dataset, a teacher's files, a specialist's classes)."""
    default: object
    schema: dict
    good: str
    part: str = ""             # data | model | optimisation | distillation | run (set from the dataclass it sits in)
    profile: bool = True
    doc: str = ""
    profile_schema: dict = field(default_factory=dict)  # where a profile is held tighter than the engine


def key(default, schema: dict, good: str, *, profile: bool = True, doc: str = "", profile_schema: dict | None = None):
    """A spec field that is one training key (its statement in the field's metadata)."""
    meta = {"key": Key(default, schema, good, profile=profile, doc=doc, profile_schema=profile_schema or {})}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataSpec:
    """What the job trains on: the dataset, its validation split, the transfer set and how examples are drawn."""
    dataset: str = key("mnist", STR, "a dataset name", profile=False)
    val_size: int = key(10000, {**INT, "minimum": 0}, "an integer >= 0",
                        doc="held out of the training set, seeded by val_seed; 0 = train on everything",
                        profile_schema={"minimum": 1})  # the sections choose on validation
    val_seed: int = key(0, {**INT, "minimum": 0}, "an integer >= 0", profile=False)
    val_speakers: list | None = key(
        None, _nullable({"type": "array", "items": STR, "minItems": 1}), "null or a non-empty list of speaker names",
        doc="speech only; these training speakers leave training and validation draws val_size utterances from them "
            "alone")
    transfer_classes: list | None = key(None, _nullable({"type": "array", "items": INT, "minItems": 1}),
                                        "null or a non-empty list of classes", profile=False,
                                        doc="classes kept in the training (transfer) set; None = all")
    train_fraction: float = key(1.0, {**NUM, "exclusiveMinimum": 0, "maximum": 1}, "a number in (0, 1]",
                                doc="seeded random fraction of the remaining training examples")
    fraction_seed: int = key(0, {**INT, "minimum": 0}, "an integer >= 0")
    jitter: int = key(0, {**INT, "minimum": 0, "maximum": MAX_JITTER},
                      f"an integer number of pixels in [0, {MAX_JITTER}]",
                      doc="max translation in pixels (the paper's teacher: 2)")
    mixup: float = key(0.0, {**NUM, "minimum": 0}, "a number >= 0 (0 = off)",
                       doc="alpha of mixup (Beta(alpha, alpha)); 0 = off. Each step mixes member k's batch with a "
                           "shuffle of itself by one lambda_k; the loss is the lambda-weighted sum of the terms with "
                           "either label; a teacher runs live on the mixed inputs (teacher_model)")
    bootstrap: bool = key(False, BOOL, "true or false",
                          doc="bagging: each member trains on its own resample (with replacement, seeded by its seed) "
                              "of the transfer set")
    class_subset: list | None = key(None, _nullable({"type": "array", "items": INT, "minItems": 1}),
                                    "null or a non-empty list of classes", profile=False,
                                    doc="specialist: these classes keep their own outputs, all others share a dustbin "
                                        "output")
    subset_fraction: float | None = key(None, _nullable({**NUM, "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
                                        "null or a number in (0, 1)", profile=False,
                                        doc="specialist: share of each epoch drawn from class_subset (the rest "
                                            "sampled afresh)")


@dataclass(frozen=True)
class ModelSpec:
    """The nets: the model family, its own settings, widths and regularisers, and what they start from."""
    model: str = key("mlp", STR, "a model name", doc="a name in kdbench.engine.models.MODELS (mlp)")
    model_params: dict = key({}, {"type": "object"}, "a mapping of the model family's own settings",
                             doc="the model family's own settings: the keys of its PARAMS (their defaults filled in)")
    widths: list = key([784, 800, 800, 10], {"type": "array", "items": {**INT, "minimum": 1}, "minItems": 2},
                       "a list of at least two integers >= 1")
    dropout_input: float = key(0.0, UNIT, "a number in [0, 1)")
    dropout_hidden: float = key(0.0, UNIT, "a number in [0, 1)")
    max_norm: float | None = key(None, _nullable({**NUM, "exclusiveMinimum": 0}), "null or a number > 0")
    init_from: str | None = key(None, PATH_OR_NULL, "null or the path of a model.pt", profile=False,
                                doc="path of a model.pt whose members initialize this one (all but the output layer)")
    init_members: list | None = key(None, MEMBERS, "null or a list of member positions", profile=False,
                                    doc="which member of init_from starts each seed (default: 0, 1, ...)")


@dataclass(frozen=True)
class OptimSpec:
    """How the nets are fitted: epochs, batches, SGD with momentum, its schedule, clipping and precision."""
    epochs: int = key(10, {**INT, "minimum": 1}, "an integer >= 1")
    batch_size: int = key(128, {**INT, "minimum": 1}, "an integer >= 1")
    lr: float = key(0.05, {**NUM, "exclusiveMinimum": 0}, "a number > 0")
    momentum: float = key(0.9, UNIT, "a number in [0, 1)")
    nesterov: bool = key(True, BOOL, "true or false")
    weight_decay: float = key(0.0, {**NUM, "minimum": 0}, "a number >= 0")
    schedule: str = key("cosine", {"enum": ["cosine", "constant"]}, "'cosine' or 'constant'",
                        doc="cosine (to 0 at the last step) or constant")
    warmup_epochs: float = key(0.0, {**NUM, "minimum": 0}, "a number >= 0")
    grad_clip: float | None = key(None, _nullable({**NUM, "exclusiveMinimum": 0}), "null or a number > 0",
                                  doc="max L2 norm of each member's gradient")
    precision: str = key("fp32", {"enum": list(PRECISIONS)}, "'fp32' or 'bf16'",
                         doc="bf16: the nets' forward and backward under bfloat16 autocast, with fp32 master weights, "
                             "optimizer state, losses and evaluation (results/bench/engine.csv measures it)")


@dataclass(frozen=True)
class DistillSpec:
    """What the student learns from: the KD variant and its hyperparameters, and the teacher's files."""
    variant: str = key("hard", STR, "the name of a registered KD variant")
    variant_params: dict = key({}, {"type": "object"}, "a mapping of the variant's hyperparameters")
    variant_modules: list = key([], PATHS, "a list of Python file paths", profile=False,
                                doc="Python files that register extra KD variants (kdbench.engine.losses.load_modules)")
    teacher_logits: str | None = key(None, PATH_OR_NULL, "null or the path of a teacher-logits cache", profile=False,
                                     doc="path of a cached (M, N_train, C) tensor from `teacher_logits`")
    teacher_pairing: str = key("ensemble", {"enum": ["ensemble", "paired", "grouped"]},
                               "'ensemble', 'paired' or 'grouped'", profile=False,
                               doc="ensemble: each member distills from all M teacher members; paired: member k from "
                                   "k; grouped: M = K*G, member k from teacher members k*G .. k*G+G-1")
    teacher_model: str | None = key(None, PATH_OR_NULL, "null or the path of the teacher's model.pt", profile=False,
                                    doc="path of the teacher's model.pt, for variants that learn from its features")
    teacher_members: list | None = key(None, MEMBERS, "null or a list of member positions", profile=False,
                                       doc="which teacher_model member teaches each seed (default: 0, 1, ...)")


@dataclass(frozen=True)
class RunSpec:
    """How the job runs and reports: validation's rhythm, keep-best, evaluation batches, checks, user files."""
    val_every: int = key(1, {**INT, "minimum": 1}, "an integer >= 1",
                         doc="validate every N epochs and after the last (None in val_errors between); 1 with "
                             "keep_best. Training is the same whatever N: only the records' history thins out")
    keep_best: bool = key(False, BOOL, "true or false",
                          doc="end with each member's best-validation epoch (early stopping) instead of its last")
    eval_batch_size: int = key(4096, {**INT, "minimum": 1}, "an integer >= 1")
    check_every: int = key(50, {**INT, "minimum": 1}, "an integer >= 1", doc="steps between non-finite loss checks")
    extensions: list = key([], PATHS, "a list of Python file paths", profile=False,
                           doc="Python files that register the job's dataset or model (kdbench.registry.load_files)")


PARTS = {"data": DataSpec, "model": ModelSpec, "optimisation": OptimSpec, "distillation": DistillSpec,
         "run": RunSpec}


@dataclass(frozen=True)
class TrainSpec:
    """One training job, nested by part. `from_config` reads the flat mapping a record holds; `config` writes it."""
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    optimisation: OptimSpec = field(default_factory=OptimSpec)
    distillation: DistillSpec = field(default_factory=DistillSpec)
    run: RunSpec = field(default_factory=RunSpec)

    @classmethod
    def from_config(cls, flat: dict) -> TrainSpec:
        """The spec of a flat config that names every key (a resolved one: `kdbench.engine.config.resolve`)."""
        missing, unknown = set(KEYS) - set(flat), set(flat) - set(KEYS)
        if missing or unknown:
            raise ValueError(f"a training spec needs every training key once: missing {sorted(missing)}, unknown "
                             f"{sorted(unknown)}")
        return cls(**{part: kind(**{f.name: flat[f.name] for f in fields(kind)}) for part, kind in PARTS.items()})

    def config(self) -> dict:
        """The flat mapping of every key, as a record holds it (`from_config` of it gives this spec back)."""
        return {f.name: getattr(getattr(self, part), f.name) for part, kind in PARTS.items() for f in fields(kind)}


KEYS: dict[str, Key] = {f.name: replace(f.metadata["key"], part=part)
                        for part, kind in PARTS.items() for f in fields(kind)}
DEFAULTS = {name: k.default for name, k in KEYS.items()}


def profile_schema() -> dict:
    """The JSON schema properties of the keys a profile's training blocks may set: `$defs/train` of
    workflow/schemas/config.schema.yaml is made from the spec here, not written beside it."""
    return {name: {**k.schema, **k.profile_schema, **({"description": k.doc} if k.doc else {})}
            for name, k in KEYS.items() if k.profile}
