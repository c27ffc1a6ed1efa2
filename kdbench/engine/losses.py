"""Knowledge-distillation losses as a registry of named variants.

What this file achieves: a variant is one small function registered with `@register("name")`. It takes the
student's logits (B, C), the hard labels (B,) and, if it needs a teacher, the teacher's logits (B, C) or a stack of
teacher members (M, B, C), plus its own keyword hyperparameters, and returns a dict of named loss terms, each
already weighted and averaged over the batch (the mdistiller convention): the training loss is the sum of the
terms, and every term is logged under its name. The trainer maps a variant over the K members of a batched model.

Built-ins up to 2018: `hard` (cross-entropy), `hinton` (Hinton, Vinyals & Dean 2015, eq. 1-2 with the T**2 factor),
`soft_only` (hinton with no hard term), `logit_matching` (squared error of zero-meaned logits, the high-temperature
limit of `hinton`, section 2.1), `hinton_geometric` (hinton with ensemble members combined by the geometric mean) and
`born_again` (hinton's loss, but its teacher is a trained copy of the student's own architecture: `teacher="self"`)
and `fitnets` (hinton plus a FitNets-style hint: the student's last hidden layer, through a regressor that is the
variant's own trainable parameter, regressed onto the teacher's; `features=True`).
Logit methods of 2022-2024, each written from its paper: `dkd` (Decoupled KD, Zhao et al. 2022), `dist` (DIST, Huang
et al. 2022), `hinton_ls` (Hinton's KD on standardized logits, Sun et al. 2024) and `nkd` (Normalized KD, Yang et al.
2023). Every built-in is finite, with finite gradients, for logits in [-50, 50] and temperatures from 1 to 20.
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
    progress: bool = False  # ramps with training: fn also gets progress=, the fraction of training done (0, 1]

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

    def __call__(self, student_logits, labels, teacher_logits=None, features=None, progress=None, **params
                 ) -> dict[str, torch.Tensor]:
        self.check_params(params)
        if self.needs_teacher and teacher_logits is None:
            raise ValueError(f"variant {self.name!r} needs teacher logits")
        extra = {}
        if self.progress:
            if progress is None:
                raise ValueError(f"variant {self.name!r} ramps with training and needs progress= (0 to 1)")
            extra["progress"] = float(progress)
        if self.features:
            if features is None:
                raise ValueError(f"variant {self.name!r} needs the student's and the teacher's features")
            extra["features"] = features
        return self.fn(student_logits, labels, teacher_logits, **extra, **{**self.defaults, **params})

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


# the KD variants: the built-ins of this file, and those users' files (`variant_modules`) register
VARIANTS = registry.Registry("KD variant", files_key="variant_modules")


def register(name: str, needs_teacher: bool = True, teacher: str = "teacher", features: bool = False,
             parameters: Callable[..., dict] | None = None, progress: bool = False, **defaults):
    """Decorator: `@register("mine", temperature=4.0)` adds fn(student, labels, teacher, **params) -> dict.

    Keyword defaults are the variant's hyperparameters (the only keys it accepts). `teacher="self"` asks for a
    trained copy of the student's own architecture as the teacher (born-again networks). `features=True` also passes
    `features={"student": (B, Hs), "teacher": (B, Ht), **own}`: the last hidden layers of student and teacher on the
    batch, and the variant's own trainable tensors made by `parameters(student_dim, teacher_dim, generator)` (a
    dict of tensors for one member), which train with the student. `progress=True` also passes `progress=`, the
    fraction of training done at the end of the current epoch, (epoch + 1) / epochs (a warm-up, a schedule)."""
    if teacher not in ("teacher", "self"):
        raise ValueError(f"teacher must be 'teacher' or 'self', got {teacher!r}")
    if features and (not needs_teacher or teacher != "teacher"):
        raise ValueError("a variant that learns from features needs the experiment's teacher (teacher='teacher')")

    def deco(fn):
        source = VARIANTS.sources.get(name) or registry.current_source()
        VARIANTS.add(name, Variant(name, fn, needs_teacher, dict(defaults), teacher, features, parameters, source,
                                   progress), same=_same_code)
        return fn
    return deco


def _same_code(old: Variant, new: Variant) -> bool:
    """A variant registered again by the same function (its file imported again) is the same variant."""
    return (old.fn.__module__, old.fn.__qualname__) == (new.fn.__module__, new.fn.__qualname__)


def load_modules(paths: list[str | Path]) -> dict[str, str]:
    """Import each variant file (it registers its variants as a side effect); return {path: sha256 of the file}."""
    return registry.load_files(paths, "variant_modules")


def modules_of(name: str) -> list[str]:
    """The variant files a job of variant `name` needs: the one file that registers it, none for a built-in. A
    variant job's config and inputs carry only this, so adding or editing one user file reruns only its students."""
    source = get(name).source
    return [] if source is None else [source]


def get(name: str) -> Variant:
    return VARIANTS.get(name)


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


# ------------------------------------------------------------------------------------------------ 2022-2024

def _target_split(logp: torch.Tensor, labels: torch.Tensor):
    """From log-probabilities (..., C): log p of the labelled class, log of the mass of every other class, the
    log-probabilities renormalized over the other classes (the labelled entry is finite but meaningless) and the
    mask of the labelled class. Written with logsumexp, so nothing underflows to log 0 for saturated nets."""
    is_target = torch.arange(logp.shape[-1], device=logp.device) == labels[..., None]
    log_target = logp.gather(-1, labels[..., None]).squeeze(-1)
    log_rest = torch.logsumexp(logp.masked_fill(is_target, -math.inf), dim=-1)
    return log_target, log_rest, logp - log_rest[..., None], is_target


def _binary_kl(log_a_t, log_a_r, log_b_t, log_b_r) -> torch.Tensor:
    """KL([a_t, a_r] || [b_t, b_r]) of two-point distributions given as logs, per example."""
    return log_a_t.exp() * (log_a_t - log_b_t) + log_a_r.exp() * (log_a_r - log_b_r)


@register("dkd", progress=True, temperature=4.0, alpha=1.0, beta=8.0, ce_weight=1.0, warmup=20 / 240)
def dkd(student_logits, labels, teacher_logits, temperature, alpha, beta, ce_weight, warmup, *, progress):
    """Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang, CVPR 2022, eq. 7): KD split into target-class
    KD (TCKD, the KL between the binary target / non-target distributions b = [p_t, 1 - p_t]) and non-target-class
    KD (NCKD, the KL between the distributions over the non-target classes renormalized); DKD = ce_weight * CE +
    alpha * T^2 * TCKD + beta * T^2 * NCKD, each KL summed over its classes and averaged over the batch. The two KD
    terms ramp in linearly, min(progress / warmup, 1): the authors' 20 of 240 CIFAR-100 epochs, as a fraction of
    training. Defaults: the CIFAR-100 setting, T=4, alpha=1, beta=8. An ensemble teacher is the arithmetic mean of
    its members' distributions at T."""
    log_p = teacher_log_probs(teacher_logits, student_logits, temperature)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    pt, pr, p_rest, is_target = _target_split(log_p, labels)
    qt, qr, q_rest, _ = _target_split(log_q, labels)
    tckd = _binary_kl(pt, pr, qt, qr).mean()
    nckd = torch.where(is_target, 0.0, p_rest.exp() * (p_rest - q_rest)).sum(-1).mean()
    ramp = min(progress / warmup, 1.0) if warmup > 0 else 1.0
    return {"hard": ce_weight * hard_ce(student_logits, labels),
            "tckd": ramp * alpha * temperature ** 2 * tckd,
            "nckd": ramp * beta * temperature ** 2 * nckd}


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of a and b along `dim` (the cosine of the centred vectors); a constant vector has
    correlation 0, with a finite gradient (norms taken as sqrt(sum of squares + eps^2))."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    norm = ((a * a).sum(dim) + eps ** 2).sqrt() * ((b * b).sum(dim) + eps ** 2).sqrt()
    return (a * b).sum(dim) / norm


@register("dist", tau=4.0, beta=1.0, gamma=1.0, ce_weight=1.0)
def dist(student_logits, labels, teacher_logits, tau, beta, gamma, ce_weight):
    """DIST (Huang, You, Wang, Qian, Xu, NeurIPS 2022, eqs. 7-9): with Y = softmax(logits / tau), the inter-class
    relation 1 - Pearson(Y_s[i, :], Y_t[i, :]) averaged over the examples i, and the intra-class relation
    1 - Pearson(Y_s[:, j], Y_t[:, j]) over the batch, averaged over the classes j; loss = ce_weight * CE +
    beta * tau^2 * inter + gamma * tau^2 * intra. Defaults beta = gamma = 1 and tau = 4 (the CIFAR-100 setting; 1 on
    ImageNet). The intra-class term couples the examples of a batch: the trainer maps the loss over the members of a
    batched model (torch.func.vmap, kdbench.engine.train), so each seed's correlation runs over its own batch only
    (tests/test_losses.py checks it against a loop over seeds). An ensemble teacher's Y is the arithmetic mean of its
    members' distributions at tau."""
    y_t = teacher_log_probs(teacher_logits, student_logits, tau).exp()
    y_s = F.softmax(student_logits / tau, dim=-1)
    inter = (1.0 - _pearson(y_s, y_t, dim=-1)).mean()
    intra = (1.0 - _pearson(y_s, y_t, dim=-2)).mean()
    return {"hard": ce_weight * hard_ce(student_logits, labels), "inter": beta * tau ** 2 * inter,
            "intra": gamma * tau ** 2 * intra}


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Z-score of each logit vector over its classes, as Sun et al. write it: (z - mean) / (1e-7 + std), with the
    unbiased std; the variance is floored at 1e-30 before the square root, which changes no value of a non-constant
    vector and keeps the gradient of a constant one finite."""
    mean = logits.mean(-1, keepdim=True)
    var = logits.var(-1, keepdim=True)
    return (logits - mean) / (1e-7 + var.clamp_min(1e-30).sqrt())


@register("hinton_ls", temperature=2.0, ce_weight=0.1, kd_weight=9.0)
def hinton_ls(student_logits, labels, teacher_logits, temperature, ce_weight, kd_weight):
    """Hinton's KD on standardized logits (Sun, Ren, Li, Wang, Cao, CVPR 2024, "Logit Standardization in Knowledge
    Distillation", eq. 9 and Algorithm 1): student and teacher logits are each z-scored per example over the classes,
    then loss = ce_weight * CE + kd_weight * T^2 * KL(softmax(z_t' / T) || softmax(z_s' / T)), KL summed over the
    classes and averaged over the batch. Defaults: the authors' CIFAR-100 KD setting, base temperature T=2, CE
    weight 0.1, KD weight 9. An ensemble teacher: each member standardized, then the arithmetic mean of their
    distributions at T."""
    teacher = standardize(_members(teacher_logits, student_logits))
    soft = soft_kl(standardize(student_logits), teacher, temperature)
    return {"hard": ce_weight * hard_ce(student_logits, labels), "soft": kd_weight * temperature ** 2 * soft}


@register("nkd", temperature=1.0, gamma=1.5, ce_weight=1.0)
def nkd(student_logits, labels, teacher_logits, temperature, gamma, ce_weight):
    """Normalized KD (Yang, Zeng, Li, Zhang, Yuan, Li, ICCV 2023, "From Knowledge Distillation to Self-Knowledge
    Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels", eq. 8): the target term
    -p_t log q_t (at T=1, the teacher's target probability as a constant weight) plus gamma * T^2 times the
    cross-entropy between the teacher's and the student's distributions over the non-target classes, each
    renormalized to sum to 1, at T; both averaged over the batch; plus ce_weight * CE. Defaults T=1, gamma=1.5: the
    setting of the authors' released code (their ImageNet experiments). An ensemble teacher is the arithmetic mean
    of its members' distributions."""
    log_p1 = teacher_log_probs(teacher_logits, student_logits, 1.0)
    log_q1 = F.log_softmax(student_logits, dim=-1)
    p_target = log_p1.gather(-1, labels[..., None]).squeeze(-1).exp().detach()
    target = -(p_target * log_q1.gather(-1, labels[..., None]).squeeze(-1)).mean()
    _, _, p_rest, is_target = _target_split(teacher_log_probs(teacher_logits, student_logits, temperature), labels)
    _, _, q_rest, _ = _target_split(F.log_softmax(student_logits / temperature, dim=-1), labels)
    non_target = -torch.where(is_target, 0.0, p_rest.exp() * q_rest).sum(-1).mean()
    return {"hard": ce_weight * hard_ce(student_logits, labels), "target": target,
            "non_target": gamma * temperature ** 2 * non_target}
