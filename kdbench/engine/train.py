"""The training loop: K seeds of one configuration trained together, hard or soft targets, resumable.

What this file achieves: `train(spec, seeds, out_dir)` trains one batched model (`kdbench.engine.models`, the MLP today)
whose K members are the K seeds of a job. It trains from the job's typed spec (`kdbench.spec.TrainSpec`: data, model,
optimisation, distillation, run), which a flat config is resolved into once (`kdbench.engine.config.resolve_spec`).
The data sit on the device as tensors (`load_run_data`); each member draws its own epoch order
(`kdbench.data.sampling`); a step gathers (K, B) examples, jitters them on the device if asked, and evaluates the
chosen KD variant per member (torch.func.vmap over members) against teacher logits read from a cache computed once
(`kdbench.engine.teachers`), never from a teacher forward pass, except the hidden features a feature variant asks for
and a `mixup` run's teacher (its inputs are mixed afresh each step). SGD with (Nesterov) momentum
(`kdbench.engine.optim`), optional warmup and cosine decay per step, optional per-member gradient clipping and max-norm.
Every epoch writes an atomic checkpoint, so an interrupted run resumes where it stopped and ends with the same numbers;
a non-finite loss stops the run with a message naming it. The job writes its spec's flat config (`config.json`)
before it trains; at the end each seed gets `seed<S>/metrics.json`, and the job keeps `model.pt` and `logits.pt`
(validation and test logits of every member, for bias corrections and ensembles).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from kdbench.data import registry as data_registry
from kdbench.data import sampling
from kdbench.data.sampling import training_indices  # noqa: F401
from kdbench.engine import losses, models, optim, teachers
from kdbench.engine.config import DEFAULTS, ConfigError, resolve, resolve_spec  # noqa: F401  (train.DEFAULTS, ...)
from kdbench.engine.evaluate import error_summary
from kdbench.engine.models import init_from_model, predict_split  # noqa: F401  (kdbench.engine.train.init_from_model, ...)
from kdbench.engine.teachers import teacher_batch  # noqa: F401
from kdbench.records import (
    atomic_torch_save,
    atomic_write_json,
    config_hash,
    device_description,
    git_commit,
    package_versions,
)
from kdbench.spec import OptimSpec, TrainSpec


class NonFiniteLossError(RuntimeError):
    pass


class DivergedError(RuntimeError):
    """Training ended with the nets giving one answer for almost every example (a diverged run)."""


def _check_writable(out_dir: Path) -> None:
    """Fail before any data is loaded or epoch trained if the run's folder cannot take its checkpoint."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".kdbench-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write the run's outputs to {out_dir}: {e.strerror or e}. Fix: choose a writable --out "
                      f"folder, or fix its permissions") from None


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _lr_factor(opt: OptimSpec, step: int, total: int, steps_per_epoch: int) -> float:
    warm = opt.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return (step + 1) / warm
    if opt.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1.0, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _clip_per_member(params, max_norm: float) -> None:
    """Each member's gradient (over all its tensors) scaled to L2 norm <= max_norm. When every member's norm is
    clearly under the bound (a cheap check by dot products, under 0.1% of it) nothing is done: the exact path below
    would scale by 1.0, so the bits are the same either way, at a fraction of its time (issue 36)."""
    rough = sum(optim.member_sq_norms(p.grad) for p in params)  # (K,)
    if bool((rough < (0.999 * max_norm) ** 2).all()):
        return
    sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)  # (K,)
    scale = torch.clamp(max_norm / (sq.sqrt() + 1e-6), max=1.0)
    for p in params:
        p.grad.mul_(scale.view(-1, *([1] * (p.grad.dim() - 1))))


def _member_loss_fn(variant: losses.Variant, params: dict, has_teacher: bool, ensemble_teacher: bool,
                    features: bool = False):
    """Per-member terms (each (K,)) for student logits (K, B, C), teacher logits and, for a feature variant, a dict
    of per-member tensors (K, ...); vmap when the variant allows it, else a loop over members. A variant that ramps
    with training (`progress=True`) gets the fraction of training done, the same for every member."""
    state = {"progress": None}

    def one(s, y, t, f):
        extra = {"progress": state["progress"]} if variant.progress else {}
        return variant(s, y, t, **({"features": f} if features else {}), **extra, **params)

    in_dims = (0, 0, (1 if ensemble_teacher else 0) if has_teacher else None, 0 if features else None)
    mapped = torch.func.vmap(one, in_dims=in_dims)

    def looped(s, y, t, f):
        outs = [one(s[k], y[k], None if t is None else (t[:, k] if ensemble_teacher else t[k]),
                    None if f is None else {n: v[k] for n, v in f.items()}) for k in range(s.shape[0])]
        return {name: torch.stack([o[name] for o in outs]) for name in outs[0]}

    state["fn"] = mapped

    def call(s, y, t, f=None, progress=None):
        state["progress"] = progress
        if s.shape[0] == 1:  # one member: the variant called on its tensors directly, as the loop does (vmap's
            # dispatch costs about 0.15-0.2 ms a step on a CPU, issue 36); the same operations on the same rows
            return looped(s, y, t, f)
        if state["fn"] is mapped:
            try:
                return mapped(s, y, t, f)
            except (RuntimeError, NotImplementedError):  # an op without a batching rule in a user variant
                state["fn"] = looped
        return looped(s, y, t, f)
    return call


@dataclass
class RunData:
    """The splits on the device and what the run sees of them: its transfer set, validation split, labels (a
    specialist's relabelled to its outputs, the splits untouched) and epoch sampler."""
    train: object  # a split (kdbench.data.registry)
    test: object
    tr_idx: torch.Tensor
    val_idx: torch.Tensor
    y_train: torch.Tensor
    y_test: torch.Tensor
    sampler: sampling.EpochSampler
    logit_offset: torch.Tensor | None = None  # per output: added to the logits when the net is judged, subtracted
    #                                           from its soft targets (a prior its draws changed; None: no offset)
    record: dict = field(default_factory=dict)  # what the run's records add about its view of the data


def load_run_data(spec: TrainSpec, seeds: list[int], root, device: torch.device) -> RunData:
    d = spec.data
    train_split = data_registry.load(d.dataset, train=True, root=root, device=device)
    test_split = data_registry.load(d.dataset, train=False, root=root, device=device)
    tr_idx, val_idx = sampling.training_indices(d, train_split.y, train_split.groups, train_split.speakers)
    tr_idx, val_idx = tr_idx.to(device), val_idx.to(device)
    y_train, y_test = train_split.y, test_split.y.to(device)
    if d.class_subset is None:
        return RunData(train_split, test_split, tr_idx, val_idx, y_train, y_test,
                       sampling.EpochSampler(tr_idx, seeds, bootstrap=d.bootstrap))
    view = sampling.ClassSubsetView(d.class_subset, d.subset_fraction, y_train, y_test, tr_idx, seeds)
    return RunData(train_split, test_split, tr_idx, val_idx, view.y_train, view.y_test, view.sampler,
                   view.logit_offset, view.record)


class Student(nn.Module):
    """The batched model and the KD variant's own trainable tensors (K, ...), trained, checkpointed and kept at their
    best epoch together."""

    def __init__(self, model: nn.Module, own: dict[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.own = nn.ParameterDict({k: nn.Parameter(v) for k, v in own.items()})


@dataclass
class Engine:
    """Everything one job trains with; `step` is the hot path."""
    spec: TrainSpec
    seeds: list[int]
    student: Student
    teacher: teachers.Teacher
    variant: losses.Variant
    loss_fn: Callable
    opt: optim.SGD
    steps_per_epoch: int
    device: torch.device = torch.device("cpu")

    def nets(self):
        """The context the nets' forward passes run in: bfloat16 autocast for `precision: bf16` (the weights stay
        fp32 masters; autocast casts each once per step), nothing for fp32."""
        if self.spec.optimisation.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, data: RunData, idx: torch.Tensor, progress: float | None = None) -> tuple[list[str], torch.Tensor]:
        """One SGD step on the examples idx (K, B); returns the loss terms' names and values (terms, K). `progress`:
        the fraction of training done, for a variant that ramps with it."""
        xb, yb = data.train.inputs(idx, self.spec.data.jitter), data.y_train[idx]
        mix = mixup(xb, self.spec.data.mixup) if self.spec.data.mixup else None
        if mix is not None:
            xb, lam, partner = mix
        with self.nets():
            if self.variant.features:
                logits, hidden = self.student.model(xb, hidden=True)
                feats = {"student": hidden.float(), "teacher": self.teacher.features(xb).float(),
                         **self.student.own}
            else:
                logits, feats = self.student.model(xb), None
        logits = logits.float()  # the losses in fp32 whatever the precision
        t = self.teacher.batch(idx, xb)
        terms = self.loss_fn(logits, yb, t, feats, progress)
        if mix is not None:  # mixup's criterion, lam * loss(y) + (1 - lam) * loss(partner's y): for cross-entropy the
            # mixed one-hot target; a term free of the label (the teacher's) is itself
            other = self.loss_fn(logits, torch.gather(yb, 1, partner), t, feats, progress)
            terms = {n: lam * v + (1 - lam) * other[n] for n, v in terms.items()}
        stacked = torch.stack(list(terms.values()))  # (terms, K)
        self.opt.zero_grad()
        stacked.sum().backward()
        if self.spec.optimisation.grad_clip:
            _clip_per_member(list(self.student.parameters()), self.spec.optimisation.grad_clip)
        self.opt.step()
        self.student.model.apply_max_norm()
        return list(terms), stacked.detach()


def mixup(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup of each member's batch x (K, B, D) with a shuffle of itself: member k draws one lambda_k ~ Beta(alpha,
    alpha) and a partner for each example; returns the mixed inputs, lambda (K,) and the partners (K, B)."""
    k, b = x.shape[:2]
    lam = torch.distributions.Beta(torch.full((k,), float(alpha), device=x.device),
                                   torch.full((k,), float(alpha), device=x.device)).sample()
    partner = torch.argsort(torch.rand(k, b, device=x.device), dim=1)
    mixed = lam.view(k, 1, 1) * x + (1 - lam.view(k, 1, 1)) * torch.gather(x, 1, partner[..., None].expand_as(x))
    return mixed, lam, partner


def build_engine(spec: TrainSpec, seeds: list[int], data: RunData, device: torch.device) -> Engine:
    k, m, o = len(seeds), spec.model, spec.optimisation
    variant = losses.get(spec.distillation.variant)
    teacher = teachers.Teacher(spec, device, len(data.train), k, data.logit_offset)
    model = models.build(spec.config(), seeds)  # a family builds from the flat config (its documented interface)
    if m.init_from is not None:
        models.init_from_model(model, m.init_from, m.init_members or list(range(k)), spec.data.class_subset)
    own = variant.own_parameters(model.feature_dim, teacher.net.feature_dim, seeds) if variant.features else {}
    student = Student(model, own).to(device)
    loss_fn = _member_loss_fn(variant, dict(spec.distillation.variant_params), teacher.active, teacher.grouped,
                              variant.features)
    steps = math.ceil(data.sampler.epoch_size / o.batch_size)
    total = steps * o.epochs
    opt = optim.SGD(student.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                    weight_decay=o.weight_decay, schedule=lambda s: _lr_factor(o, s, total, steps))
    return Engine(spec, list(seeds), student, teacher, variant, loss_fn, opt, steps, device)


def run_epoch(eng: Engine, data: RunData, name: str, epoch: int) -> tuple[list[str], torch.Tensor]:
    """One epoch of every member; returns the loss terms' names and their epoch means (terms, K) on the CPU."""
    eng.student.train()
    perm = data.sampler.epoch()
    bs, sums, count, names = eng.spec.optimisation.batch_size, None, 0, []
    # a ramping variant's schedule: epoch-wise, as its authors count
    progress = (epoch + 1) / eng.spec.optimisation.epochs
    for step in range(eng.steps_per_epoch):
        idx = perm[:, step * bs:(step + 1) * bs]
        names, values = eng.step(data, idx, progress)
        w = idx.shape[1]
        sums = values * w if sums is None else sums + values * w
        count += w
        if (step + 1) % eng.spec.run.check_every == 0 or step == eng.steps_per_epoch - 1:
            _check_finite(sums, names, eng.seeds, name, epoch, step)
    return names, (sums / count).cpu()


def validation_errors(eng: Engine, data: RunData) -> list[int | None]:
    if not len(data.val_idx):
        return [None] * len(eng.seeds)
    logits = models.predict_split(eng.student.model, data.train, data.val_idx, eng.spec.run.eval_batch_size)
    # a net is judged as it is used: with its logit offset (so early stopping picks the epoch best after it)
    return [r["errors"] for r in error_summary(logits, data.y_train[data.val_idx], bias=data.logit_offset)]


def _checkpoint(eng: Engine, data: RunData, chash: str, epoch: int, history: dict, best, seconds: float,
                device: torch.device) -> dict:
    return {"config_hash": chash, "seeds": eng.seeds, "data": data.train.fingerprint, "epoch": epoch,
            "history": history, "seconds_in_process": seconds, "model": eng.student.state_dict(),
            "opt": eng.opt.state_dict(), "best": best,
            "orders": data.sampler.state(), "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _resume(eng: Engine, data: RunData, path: Path, chash: str, device: torch.device, name: str):
    """(history, start epoch, best) from the job's checkpoint if it was made by this config, seeds and data; None
    when there is none to resume."""
    if not path.exists():
        return None
    ck = torch.load(path, map_location=device, weights_only=False)
    if (ck["config_hash"], ck["seeds"], ck.get("data")) != (chash, eng.seeds, data.train.fingerprint):
        print(f"kdbench: {name}: the checkpoint there was made with another config, seeds or data; starting over")
        return None
    eng.student.load_state_dict(ck["model"])
    eng.opt.load_state_dict(ck["opt"])
    data.sampler.load_state(ck["orders"])
    torch.set_rng_state(ck["rng_cpu"])
    if device.type == "cuda" and ck.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ck["rng_cuda"], device)
    history = ck["history"]
    # the interrupted process's time up to its last checkpoint counts towards wall_seconds
    history["seconds_before"] = history.get("seconds_before", 0.0) + ck.get("seconds_in_process", 0.0)
    print(f"kdbench: {name}: resuming after epoch {ck['epoch']}")
    return history, ck["epoch"], ck.get("best")


def train(spec: TrainSpec, seeds: list[int], out_dir: Path | str, device: str | None = None,
          root: Path | str | None = None, name: str | None = None, progress: bool = True,
          on_epoch_end: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train the K=len(seeds) members of `spec` together; write records under out_dir; return the metrics dicts.
    The spec is trained as it is: the one resolution that made it (`kdbench.engine.config.resolve_spec`, which
    `kdbench train` calls through `kdbench.plan.bound_config`) checked it."""
    if not isinstance(spec, TrainSpec):
        raise TypeError(f"train takes a TrainSpec, not {type(spec).__name__}. Fix: resolve the config first, "
                        f"kdbench.engine.config.resolve_spec(cfg)")
    out_dir, cfg = Path(out_dir), spec.config()
    name = name or str(out_dir)
    _check_writable(out_dir)
    atomic_write_json(out_dir / "config.json", {"name": name, "seeds": list(seeds), "config": cfg})
    device, chash, t_start = pick_device(device), config_hash(cfg), time.perf_counter()
    data = load_run_data(spec, seeds, root, device)
    module_hashes = losses.load_modules(spec.distillation.variant_modules)
    eng = build_engine(spec, seeds, data, device)
    torch.manual_seed(seeds[0])  # dropout masks and jitter
    history = {"train_loss": [], "train_terms": [], "val_errors": [], "epoch_seconds": [], "seconds_before": 0.0}
    best = ({"errors": [math.inf] * len(seeds), "epoch": [0] * len(seeds),
             "state": {n: t.detach().clone() for n, t in eng.student.state_dict().items()}}
            if spec.run.keep_best else None)
    ckpt_path, start_epoch = out_dir / "checkpoint.pt", 0
    resumed = _resume(eng, data, ckpt_path, chash, device, name)
    if resumed is not None:
        history, start_epoch, best = resumed
    epochs = spec.optimisation.epochs
    bar = tqdm(range(start_epoch, epochs), desc=name, disable=not progress, leave=False)
    for epoch in bar:
        t_epoch = time.perf_counter()
        names, mean_terms = run_epoch(eng, data, name, epoch)
        due = (epoch + 1) % spec.run.val_every == 0 or epoch + 1 == epochs  # the last epoch always
        val_err = validation_errors(eng, data) if due else [None] * len(seeds)
        if best is not None:
            _keep_best(eng.student, best, val_err, epoch)
        history["train_terms"].append({t: mean_terms[i].tolist() for i, t in enumerate(names)})
        history["train_loss"].append(mean_terms.sum(0).tolist())
        history["val_errors"].append(val_err)
        history["epoch_seconds"].append(time.perf_counter() - t_epoch)
        atomic_torch_save(ckpt_path, _checkpoint(eng, data, chash, epoch + 1, history, best,
                                                 time.perf_counter() - t_start, device))
        bar.set_postfix(loss=f"{mean_terms.sum(0).mean():.4f}",
                        val_err=("-" if val_err[0] is None else f"{sum(v for v in val_err) / len(seeds):.0f}"))
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    if best is not None:
        eng.student.load_state_dict(best["state"])
    facts = {"name": name, "config_hash": chash, "device": device, "module_hashes": module_hashes,
             "wall": history["seconds_before"] + time.perf_counter() - t_start,  # all processes of a resumed run
             "start_epoch": start_epoch, "optimizer": eng.opt.kernel}
    records = write_records(eng, data, history, best, out_dir, facts)
    ckpt_path.unlink(missing_ok=True)
    return records


def write_records(eng: Engine, data: RunData, history: dict, best, out_dir: Path, facts: dict) -> list[dict]:
    """Evaluate the final (or best) members and write model.pt, logits.pt and seed<S>/metrics.json."""
    spec, seeds, model, ebs = eng.spec, eng.seeds, eng.student.model, eng.spec.run.eval_batch_size
    cfg = spec.config()  # the records keep the flat config
    val_logits = models.predict_split(model, data.train, data.val_idx, ebs)
    test_logits = models.predict_split(model, data.test, torch.arange(len(data.test), device=data.tr_idx.device), ebs)
    test = error_summary(test_logits, data.y_test)
    train_logits, y_tr = models.predict_split(model, data.train, data.tr_idx, ebs), data.y_train[data.tr_idx]
    train_acc = [r["accuracy"] for r in error_summary(train_logits, y_tr)]
    at_chance = _check_learned(train_logits, y_tr, seeds, facts["name"])
    atomic_torch_save(out_dir / "model.pt", {"model": spec.model.model, "model_config": model.config(),
                                             "train_config": cfg, "state_dict": model.state_dict()})
    groups = ({"val_groups": data.train.groups[data.val_idx].cpu(), "test_groups": data.test.groups.cpu()}
              if data.train.groups is not None else {})
    atomic_torch_save(out_dir / "logits.pt", {"val": val_logits.cpu(), "val_idx": data.val_idx.cpu(),
                                              "val_labels": data.y_train[data.val_idx].cpu(), "test": test_logits.cpu(),
                                              "test_labels": data.y_test.cpu(), "seeds": list(seeds), **groups})
    common = {"name": facts["name"], "config": cfg, "config_hash": facts["config_hash"], "git_commit": git_commit(),
              "versions": package_versions(), "device": device_description(facts["device"]),
              "wall_seconds": facts["wall"], "members_trained_together": len(seeds),
              "variant_module_sha256": facts["module_hashes"], "epochs": spec.optimisation.epochs,
              "precision": spec.optimisation.precision, "matmul": models.matmul_path(facts["device"]),
              "optimizer": facts["optimizer"],
              "train_examples": data.sampler.epoch_size,
              "resumed_after_epoch": facts["start_epoch"],
              "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "val_examples": int(len(data.val_idx)),
              "epoch_seconds": history["epoch_seconds"]}
    subset = data.record
    records = []
    for m, seed in enumerate(seeds):
        rec = {**common, "seed": seed, "train_loss": [e[m] for e in history["train_loss"]],
               "train_terms": [{t: v[m] for t, v in e.items()} for e in history["train_terms"]],
               "val_errors": [e[m] for e in history["val_errors"]],
               "final_epoch": best["epoch"][m] if best is not None else spec.optimisation.epochs, **subset,
               "train_accuracy": train_acc[m], "at_chance": at_chance[m],
               "test_errors": test[m]["errors"], "test_accuracy": test[m]["accuracy"],
               "test_per_class_errors": test[m]["per_class_errors"],
               "test_per_class_counts": test[m]["per_class_counts"]}
        atomic_write_json(out_dir / f"seed{seed}" / "metrics.json", rec)
        records.append(rec)
    return records


@torch.no_grad()
def _keep_best(model: nn.Module, best: dict, val_err: list[int], epoch: int) -> None:
    """Copy the members whose validation errors improved into best["state"] (all tensors are member-major)."""
    improved = [e < b for e, b in zip(val_err, best["errors"])]
    if not any(improved):
        return
    mask = torch.tensor(improved)
    for name, t in model.state_dict().items():
        best["state"][name][mask.to(t.device)] = t[mask.to(t.device)]
    for m, up in enumerate(improved):
        if up:
            best["errors"][m], best["epoch"][m] = val_err[m], epoch + 1


def _check_learned(logits: torch.Tensor, y: torch.Tensor, seeds, name) -> list[bool]:
    """A member that gives one answer for 99% of its transfer set (whose classes are more mixed) has diverged: stop the
    run before its numbers can enter a table as a normal result. A member whose balanced accuracy there (the mean recall
    over the classes present) is within 2 points of a constant answer's, 1/classes, is returned as at chance: its record
    says so and the log warns (tiny smoke budgets get there without diverging). Balanced, so that a specialist trained
    on a resampled transfer set is judged on every class, not on its dustbin's share."""
    classes = torch.unique(y)
    pred = logits.argmax(-1).to(y.device)  # (K, N)
    hits = (pred == y).float()
    recall = torch.stack([hits[:, y == c].mean(1) for c in classes], 1)  # (K, classes present)
    balanced, chance = recall.mean(1).tolist(), 1.0 / classes.numel()
    top_label = float(torch.bincount(y).max()) / y.shape[0]
    top_answer = [float(torch.bincount(p).max()) / p.shape[0] for p in pred]
    collapsed = [(s, a) for s, a in zip(seeds, top_answer) if a >= 0.99 > top_label]
    if collapsed:
        detail = ", ".join(f"seed {s}: {100 * a:.2f}%" for s, a in collapsed)
        raise DivergedError(
            f"run {name}: the net gives one answer for almost every example of its transfer set ({detail} of them; "
            f"its most frequent class is {100 * top_label:.1f}%): the run diverged, so no metrics were written. "
            f"Lower lr, set or lower grad_clip.")
    at_chance = [b <= chance + 0.02 for b in balanced]
    for s, b, flag in zip(seeds, balanced, at_chance):
        if flag:
            print(f"kdbench: warning: run {name} seed {s}: balanced accuracy {100 * b:.1f}% on its transfer set is "
                  f"at chance ({100 * chance:.1f}%); its record says at_chance: true")
    return at_chance


def _check_finite(sums: torch.Tensor, term_names: list[str], seeds, name, epoch, step) -> None:
    bad = ~torch.isfinite(sums)
    if bool(bad.any()):
        t, m = (int(i) for i in bad.nonzero()[0])
        raise NonFiniteLossError(
            f"run {name}: loss term {term_names[t]!r} became {float(sums[t, m])} for seed {seeds[m]} at epoch "
            f"{epoch + 1}, step {step + 1}; the last good epoch's checkpoint is kept. Lower lr or set grad_clip.")


def teacher_logits(model_path: Path | str, out_path: Path | str, root: Path | str | None = None,
                   device: str | None = None, batch_size: int = 4096, members: list[int] | None = None
                   ) -> torch.Tensor:
    """`kdbench.engine.teachers.cache_logits` on the chosen device (what `kdbench teacher-logits` runs)."""
    return teachers.cache_logits(model_path, out_path, root, pick_device(device), batch_size, members)
