"""Knowledge-distillation losses as a registry of named variants.

What this file achieves: a variant is one small function registered with `@register("name")`. It takes the
student's logits (B, C), the hard labels (B,) and, if it needs a teacher, the teacher's logits (B, C) or a stack of
teacher members (M, B, C), plus its own keyword hyperparameters, and returns a dict of named loss terms, each
already weighted and averaged over the batch (the mdistiller convention): the training loss is the sum of the
terms, and every term is logged under its name. The trainer maps a variant over the K members of a batched model.

Built-ins: `hard` (cross-entropy), `hinton` (Hinton, Vinyals & Dean 2015, eq. 1-2 with the T**2 factor),
`soft_only` (hinton with no hard term), `logit_matching` (squared error of zero-meaned logits, the high-temperature
limit of `hinton`, section 2.1), `hinton_geometric` (hinton with ensemble members combined by the geometric mean) and
`born_again` (hinton's loss, but its teacher is a trained copy of the student's own architecture: `teacher="self"`)
and `fitnets` (hinton plus a FitNets-style hint: the student's last hidden layer, through a regressor that is the
variant's own trainable parameter, regressed onto the teacher's; `features=True`).
`distillation_loss` is the reference formula the whole suite compares against. `load_modules` imports variant files
given by path (the workflow's `variant_modules`), so a variant can live anywhere on disk.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from kdbench import registry

ENSEMBLE_MEANS = ("arithmetic", "geometric")


@dataclass
class Variant:
    name: str
    fn: Callable[..., dict]
    needs_teacher: bool
    defaults: dict = field(default_factory=dict)
    teacher: str = "teacher"  # "teacher": the experiment's teacher; "self": a trained copy of the student's net
    features: bool = False  # also learns from hidden features: fn gets features={"student", "teacher", own params}
    parameters: Callable[..., dict] | None = None  # (student_dim, teacher_dim, generator) -> one member's own tensors
    source: str | None = None  # the variant file (as listed in variant_modules) that registers it; None: built in

    def check_params(self, params: dict) -> None:
        """Raise ValueError naming any key that is not one of the variant's hyperparameters, or a value out of its
        range: the ranges of PARAM_RULES for the names every variant shares, else the type of the default."""
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"variant {self.name!r} has no parameter(s) {sorted(unknown)}; "
                             f"it takes {sorted(self.defaults)}")
        for key, value in params.items():
            ok, what = PARAM_RULES.get(key) or _same_kind(self.defaults[key])
            if not ok(value):
                raise ValueError(f"variant {self.name!r}: {key} must be {what}, got {value!r}")

    def __call__(self, student_logits, labels, teacher_logits=None, features=None, **params
                 ) -> dict[str, torch.Tensor]:
        self.check_params(params)
        if self.needs_teacher and teacher_logits is None:
            raise ValueError(f"variant {self.name!r} needs teacher logits")
        if self.features:
            if features is None:
                raise ValueError(f"variant {self.name!r} needs the student's and the teacher's features")
            return self.fn(student_logits, labels, teacher_logits, features=features, **{**self.defaults, **params})
        return self.fn(student_logits, labels, teacher_logits, **{**self.defaults, **params})

    def own_parameters(self, student_dim: int, teacher_dim: int, seeds: list[int]) -> dict[str, torch.Tensor]:
        """The variant's trainable tensors for K members, stacked (K, ...); member k drawn from its own seed."""
        if self.parameters is None:
            return {}
        per = [self.parameters(student_dim, teacher_dim, torch.Generator().manual_seed(7_919 * s + 3)) for s in seeds]
        return {name: torch.stack([p[name] for p in per]) for name in per[0]}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# hyperparameters shared by many variants (user variants too): name -> (test, what a good value is)
PARAM_RULES = {
    "temperature": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "hard_weight": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "ensemble": (lambda v: v in ENSEMBLE_MEANS, f"one of {list(ENSEMBLE_MEANS)}"),
}


def _same_kind(default):
    """Any other hyperparameter: a value of the same kind as its default (a finite number, a bool, a string)."""
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "true or false"
    if _is_number(default):
        return _is_number, "a finite number"
    if isinstance(default, str):
        return (lambda v: isinstance(v, str)), "a string"
    return (lambda v: True), "any value"


VARIANTS: dict[str, Variant] = {}


def register(name: str, needs_teacher: bool = True, teacher: str = "teacher", features: bool = False,
             parameters: Callable[..., dict] | None = None, **defaults):
    """Decorator: `@register("mine", temperature=4.0)` adds fn(student, labels, teacher, **params) -> dict.

    Keyword defaults are the variant's hyperparameters (the only keys it accepts). `teacher="self"` asks for a
    trained copy of the student's own architecture as the teacher (born-again networks). `features=True` also passes
    `features={"student": (B, Hs), "teacher": (B, Ht), **own}`: the last hidden layers of student and teacher on the
    batch, and the variant's own trainable tensors made by `parameters(student_dim, teacher_dim, generator)` (a
    dict of tensors for one member), which train with the student."""
    if teacher not in ("teacher", "self"):
        raise ValueError(f"teacher must be 'teacher' or 'self', got {teacher!r}")
    if features and (not needs_teacher or teacher != "teacher"):
        raise ValueError("a variant that learns from features needs the experiment's teacher (teacher='teacher')")

    def deco(fn):
        old = VARIANTS.get(name)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"a KD variant named {name!r} is already registered")
        source = registry.current_source() if old is None or old.source is None else old.source
        VARIANTS[name] = Variant(name, fn, needs_teacher, dict(defaults), teacher, features, parameters, source)
        return fn
    return deco


def load_modules(paths: list[str | Path]) -> dict[str, str]:
    """Import each variant file (it registers its variants as a side effect); return {path: sha256 of the file}."""
    return registry.load_files(paths, "variant_modules")


def modules_of(name: str) -> list[str]:
    """The variant files a job of variant `name` needs: the one file that registers it, none for a built-in. A
    variant job's config and inputs carry only this, so adding or editing one user file reruns only its students."""
    source = get(name).source
    return [] if source is None else [source]


def get(name: str) -> Variant:
    if name not in VARIANTS:
        raise KeyError(f"unknown KD variant {name!r}; registered: {sorted(VARIANTS)}")
    return VARIANTS[name]


def _members(teacher_logits, student_logits: torch.Tensor) -> torch.Tensor:
    """Teacher logits as a stack (M, ..., C): a list/tuple is stacked, a tensor shaped like the student gets M=1."""
    if isinstance(teacher_logits, (list, tuple)):
        teacher_logits = torch.stack(list(teacher_logits))
    if teacher_logits.dim() == student_logits.dim():
        return teacher_logits.unsqueeze(0)
    if teacher_logits.dim() == student_logits.dim() + 1:
        return teacher_logits
    raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match student {tuple(student_logits.shape)}")


def teacher_log_probs(teacher_logits, student_logits: torch.Tensor, temperature: float,
                      ensemble: str = "arithmetic") -> torch.Tensor:
    """log p of the soft targets at temperature T; members combined by arithmetic mean of probabilities or by
    geometric mean (normalized mean of log-probabilities)."""
    logp = F.log_softmax(_members(teacher_logits, student_logits) / temperature, dim=-1)
    if logp.shape[0] == 1:
        return logp[0]
    if ensemble == "arithmetic":
        return torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])
    if ensemble == "geometric":
        return F.log_softmax(logp.mean(dim=0), dim=-1)
    raise ValueError(f"ensemble must be one of {ENSEMBLE_MEANS}, got {ensemble!r}")


def soft_kl(student_logits, teacher_logits, temperature: float, ensemble: str = "arithmetic") -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)), summed over classes, averaged over all leading dims."""
    log_p = teacher_log_probs(teacher_logits, student_logits, temperature, ensemble)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def hard_ce(student_logits, labels) -> torch.Tensor:
    """Cross-entropy with the labels, averaged over all leading dims: F.cross_entropy's value, written with gather,
    which vmap maps directly (F.cross_entropy under vmap goes through a decomposition whose import costs 0.4 s per
    job; the values and gradients are bit-identical)."""
    return -F.log_softmax(student_logits, -1).gather(-1, labels[..., None]).mean()


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, hard_weight: float,
                      ensemble: str = "arithmetic") -> torch.Tensor:
    """hard_weight * CE(student, labels) + (1 - hard_weight) * T**2 * KL(p_T || q_T), both averaged over the batch.

    The soft term's gradient w.r.t. the student logits is (1 - hard_weight) * T * (q - p) / N.
    """
    terms = hinton(student_logits, labels, teacher_logits, temperature=temperature, hard_weight=hard_weight,
                   ensemble=ensemble)
    return terms["hard"] + terms["soft"]


@register("hard", needs_teacher=False)
def hard(student_logits, labels, teacher_logits=None):
    return {"hard": hard_ce(student_logits, labels)}


@register("hinton", temperature=20.0, hard_weight=0.1, ensemble="arithmetic")
def hinton(student_logits, labels, teacher_logits, temperature, hard_weight, ensemble):
    soft = soft_kl(student_logits, teacher_logits, temperature, ensemble)
    hard_term = hard_ce(student_logits, labels) if hard_weight else student_logits.new_zeros(())
    return {"hard": hard_weight * hard_term, "soft": (1.0 - hard_weight) * temperature ** 2 * soft}


@register("soft_only", temperature=20.0, ensemble="arithmetic")
def soft_only(student_logits, labels, teacher_logits, temperature, ensemble):
    return {"soft": temperature ** 2 * soft_kl(student_logits, teacher_logits, temperature, ensemble)}


@register("logit_matching")
def logit_matching(student_logits, labels, teacher_logits):
    """mean over examples of sum_i (z_i - v_i)**2 / (2C) with both logit vectors zero-meaned per example: its
    gradient (z - v) / (C N) is the high-T limit of hinton's T**2-scaled soft term (paper eq. 4). Teacher members
    are averaged in logit space."""
    v = _members(teacher_logits, student_logits).mean(0)
    z = student_logits - student_logits.mean(-1, keepdim=True)
    v = v - v.mean(-1, keepdim=True)
    c = student_logits.shape[-1]
    return {"logit": ((z - v) ** 2).sum(-1).mean() / (2 * c)}


@register("hinton_geometric", temperature=20.0, hard_weight=0.1)
def hinton_geometric(student_logits, labels, teacher_logits, temperature, hard_weight):
    """hinton with ensemble members combined by the normalized geometric mean of their probabilities."""
    return hinton(student_logits, labels, teacher_logits, temperature, hard_weight, "geometric")


@register("born_again", teacher="self", temperature=20.0, hard_weight=0.1)
def born_again(student_logits, labels, teacher_logits, temperature, hard_weight):
    """Born-again networks (Furlanello et al. 2018): hinton's loss with a teacher of the student's own architecture
    trained on hard targets; the workflow supplies that teacher's cached logits."""
    return hinton(student_logits, labels, teacher_logits, temperature, hard_weight, "arithmetic")


def _hint_regressor(student_dim: int, teacher_dim: int, generator: torch.Generator) -> dict:
    """FitNets' regressor from the student's guided layer to the teacher's hint layer (nn.Linear's init law)."""
    bound = 1.0 / math.sqrt(student_dim)
    return {"regressor": torch.empty(student_dim, teacher_dim).uniform_(-bound, bound, generator=generator)}


@register("fitnets", features=True, parameters=_hint_regressor, temperature=20.0, hard_weight=0.1, hint_weight=1.0)
def fitnets(student_logits, labels, teacher_logits, temperature, hard_weight, hint_weight, *, features):
    """FitNets-style hints (Romero et al. 2015) in one stage: hinton's loss plus hint_weight * 1/2 * the mean
    squared error between the teacher's last hidden layer and a learned linear map (the regressor, trained with the
    student) of the student's last hidden layer."""
    terms = hinton(student_logits, labels, teacher_logits, temperature, hard_weight, "arithmetic")
    guess = features["student"] @ features["regressor"]
    terms["hint"] = hint_weight * 0.5 * (guess - features["teacher"]).pow(2).mean()
    return terms
