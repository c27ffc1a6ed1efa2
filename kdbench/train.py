"""The training engine: K seeds of one configuration trained together, hard or soft targets, resumable.

What this file achieves: `train(cfg, seeds, out_dir)` trains one batched `MLP` whose K members are the K seeds of a
configuration. The whole dataset sits on the device as uint8 tensors; each member draws its own data order from its
own seeded generator; a step gathers (K, B) examples, jitters them on the device if asked, and evaluates the chosen
KD variant per member (torch.func.vmap over members) against teacher logits read from a cache computed once per
transfer set (`teacher_logits`), never from a teacher forward pass. SGD with (Nesterov) momentum, optional warmup
and cosine decay per step, optional per-member gradient clipping and max-norm. Every epoch writes an atomic
checkpoint, so an interrupted run resumes where it stopped and ends with the same numbers; a non-finite loss stops
the run with a message naming it. At the end each seed gets `seed<S>/metrics.json`, and the job keeps `model.pt`
and `logits.pt` (validation and test logits of every member, for bias corrections and ensembles).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from kdbench import data as kdata
from kdbench import losses
from kdbench.config import DEFAULTS, ConfigError, resolve  # noqa: F401  (kdbench.train.DEFAULTS, .resolve)
from kdbench.evaluate import error_summary
from kdbench.models import MLP, predict_logits
from kdbench.records import (atomic_torch_save, atomic_write_json, config_hash, device_description, git_commit,
                             package_versions)

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


def training_indices(cfg: dict, train_labels: torch.Tensor, groups: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(transfer-set indices, validation indices) into the full training split, both seeded; with groups (speech
    utterances) validation holds out val_size whole groups."""
    n = train_labels.shape[0]
    tr, val = kdata.validation_split(n, cfg["val_size"], cfg["val_seed"], groups)
    if cfg["transfer_classes"] is not None:
        keep = torch.isin(train_labels.cpu()[tr], torch.tensor(cfg["transfer_classes"]))
        tr = tr[keep]
    if cfg["train_fraction"] < 1.0:
        g = torch.Generator().manual_seed(cfg["fraction_seed"])
        m = max(1, round(cfg["train_fraction"] * tr.shape[0]))
        tr = tr[torch.randperm(tr.shape[0], generator=g)[:m]].sort().values
    return tr, val


def _lr_factor(cfg: dict, step: int, total: int, steps_per_epoch: int) -> float:
    warm = cfg["warmup_epochs"] * steps_per_epoch
    if warm and step < warm:
        return (step + 1) / warm
    if cfg["schedule"] == "constant":
        return 1.0
    progress = (step - warm) / max(1.0, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _clip_per_member(params, max_norm: float) -> None:
    sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)  # (K,)
    scale = torch.clamp(max_norm / (sq.sqrt() + 1e-6), max=1.0)
    for p in params:
        p.grad.mul_(scale.view(-1, *([1] * (p.grad.dim() - 1))))


def _member_loss_fn(variant: losses.Variant, params: dict, has_teacher: bool, ensemble_teacher: bool):
    """Per-member terms (each (K,)) for student logits (K, B, C); vmap when the variant allows it, else a loop."""
    def one(s, y, t):
        return variant(s, y, t, **params)

    in_dims = (0, 0, (1 if ensemble_teacher else 0) if has_teacher else None)
    mapped = torch.func.vmap(one, in_dims=in_dims)

    def looped(s, y, t):
        outs = [one(s[k], y[k], None if t is None else (t[:, k] if ensemble_teacher else t[k]))
                for k in range(s.shape[0])]
        return {name: torch.stack([o[name] for o in outs]) for name in outs[0]}

    state = {"fn": mapped}

    def call(s, y, t):
        if state["fn"] is mapped:
            try:
                return mapped(s, y, t)
            except (RuntimeError, NotImplementedError):  # an op without a batching rule in a user variant
                state["fn"] = looped
        return looped(s, y, t)
    return call


def _load_teacher(cfg: dict, device: torch.device, n_train: int, members: int) -> torch.Tensor | None:
    variant = losses.get(cfg["variant"])
    if not variant.needs_teacher:
        return None
    if cfg["teacher_logits"] is None:
        raise ValueError(f"variant {cfg['variant']!r} needs teacher logits: set teacher_logits to a cache file")
    blob = torch.load(cfg["teacher_logits"], map_location="cpu")
    t = blob["logits"].to(device=device, dtype=torch.float32)  # (M, N, C)
    if t.shape[1] != n_train:
        raise ValueError(f"teacher logits {cfg['teacher_logits']} cover {t.shape[1]} examples, "
                         f"the training split has {n_train}")
    if cfg["teacher_pairing"] == "paired" and t.shape[0] != members:
        raise ValueError(f"paired teacher needs one teacher member per seed: {t.shape[0]} members, {members} seeds")
    if cfg["teacher_pairing"] == "grouped":
        if t.shape[0] % members:
            raise ValueError(f"grouped teacher: {t.shape[0]} teacher members do not split into {members} groups")
        t = t.reshape(members, t.shape[0] // members, *t.shape[1:])  # (K, G, N, C)
    return t


def teacher_batch(teacher: torch.Tensor, idx: torch.Tensor, pairing: str) -> torch.Tensor:
    """Teacher logits of the examples idx (K, B) that each student member sees: "ensemble" (M, N, C) -> all M for
    every member (M, K, B, C); "grouped" (K, G, N, C) -> member k's own G teachers (G, K, B, C); "paired" (K, N, C)
    -> member k's own teacher (K, B, C)."""
    rows = torch.arange(idx.shape[0], device=idx.device)[:, None]
    if pairing == "ensemble":
        return teacher[:, idx]
    if pairing == "grouped":
        return teacher[rows, :, idx].permute(2, 0, 1, 3)  # advanced indices first: (K, B, G, C)
    return teacher[rows, idx]


def _subset_labels(cfg: dict, train_split, test_split, tr_idx: torch.Tensor) -> dict:
    """Relabel both splits for a specialist (subset classes 0..n-1, everything else the dustbin n) and prepare its
    sampling: each epoch holds every subset example of the transfer set plus others drawn afresh so that subset
    examples make up `subset_fraction` of it (all examples, unresampled, without a subset_fraction)."""
    classes = torch.tensor(cfg["class_subset"], device=train_split.y.device)
    num = int(max(train_split.y.max(), test_split.y.max())) + 1
    remap = torch.full((num,), len(classes), dtype=torch.long, device=classes.device)
    remap[classes] = torch.arange(len(classes), device=classes.device)
    in_subset = torch.isin(train_split.y[tr_idx], classes)
    natural = float(in_subset.float().mean())
    train_split.y, test_split.y = remap[train_split.y], remap[test_split.y.to(classes.device)]
    inside, outside = tr_idx[in_subset], tr_idx[~in_subset]
    f = cfg["subset_fraction"]
    if f is None:
        return {"inside": tr_idx, "outside": tr_idx[:0], "n_out": 0, "epoch_size": tr_idx.shape[0],
                "natural_fraction": natural, "dustbin_shift": 0.0}
    n_out = min(outside.shape[0], round(inside.shape[0] * (1 - f) / f))
    # the dustbin's prior odds against the subset were (1-f)/f in training and are (1-natural)/natural in the data
    shift = math.log(((1 - natural) / natural) / ((1 - f) / f))
    return {"inside": inside, "outside": outside, "n_out": n_out, "epoch_size": inside.shape[0] + n_out,
            "natural_fraction": natural, "dustbin_shift": shift}


def _subset_epoch(subset: dict, g: torch.Generator) -> torch.Tensor:
    pick = subset["outside"][torch.randperm(subset["outside"].shape[0], generator=g)[:subset["n_out"]].to(
        subset["outside"].device)]
    epoch = torch.cat([subset["inside"], pick])
    return epoch[torch.randperm(epoch.shape[0], generator=g).to(epoch.device)]


@torch.no_grad()
def init_from_model(model: MLP, path: Path | str, members: list[int], class_subset: list[int] | None) -> None:
    """Start member k from member members[k] of a trained model: hidden layers copied; the output layer copied, or
    for a specialist the subset's output units copied and the dustbin unit set to the mean of the others' weights
    with bias mean + log(count), so that it starts near the generalist's total probability of those classes."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    src = blob["state_dict"]
    idx = torch.tensor(members)
    layers = len(model.weights)
    if blob["model_config"]["widths"][:-1] != model.widths[:-1]:
        raise ValueError(f"init_from {path}: widths {blob['model_config']['widths']} do not match {model.widths}")
    for i in range(layers):
        w, b = src[f"weights.{i}"][idx], src[f"biases.{i}"][idx]
        if i == layers - 1 and class_subset is not None:
            keep = torch.tensor(class_subset)
            rest = torch.tensor([c for c in range(w.shape[-1]) if c not in set(class_subset)])
            w = torch.cat([w[..., keep], w[..., rest].mean(-1, keepdim=True)], -1)
            b = torch.cat([b[..., keep], b[..., rest].mean(-1, keepdim=True) + math.log(len(rest))], -1)
        model.weights[i].copy_(w)
        model.biases[i].copy_(b)


def predict_split(model: MLP, split, idx: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Eval-mode logits (K, len(idx), C) of the examples idx of a split, inputs gathered chunk by chunk."""
    chunks = [predict_logits(model, split.inputs(idx[i:i + batch_size]), batch_size)
              for i in range(0, idx.shape[0], batch_size)]
    return torch.cat(chunks, dim=1) if chunks else torch.zeros(model.members, 0, model.widths[-1])


def train(cfg: dict, seeds: list[int], out_dir: Path | str, device: str | None = None, root: Path | str | None = None,
          name: str | None = None, progress: bool = True,
          on_epoch_end: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train the K=len(seeds) members of `cfg` together; write records under out_dir; return the metrics dicts."""
    cfg = resolve(cfg)
    out_dir = Path(out_dir)
    name = name or str(out_dir)
    _check_writable(out_dir)
    device = pick_device(device)
    chash = config_hash(cfg)
    t_start = time.perf_counter()

    train_split = kdata.load(cfg["dataset"], train=True, root=root, device=device)
    test_split = kdata.load(cfg["dataset"], train=False, root=root, device=device)
    tr_idx, val_idx = training_indices(cfg, train_split.y, train_split.groups)
    tr_idx, val_idx = tr_idx.to(device), val_idx.to(device)
    subset = None
    if cfg["class_subset"] is not None:
        subset = _subset_labels(cfg, train_split, test_split, tr_idx)
    y_val = train_split.y[val_idx]
    test_all = torch.arange(len(test_split), device=device)
    ebs = cfg["eval_batch_size"]

    k = len(seeds)
    module_hashes = losses.load_modules(cfg["variant_modules"])
    teacher = _load_teacher(cfg, device, len(train_split), k)
    variant = losses.get(cfg["variant"])
    ensemble_teacher = teacher is not None and cfg["teacher_pairing"] in ("ensemble", "grouped")
    loss_fn = _member_loss_fn(variant, dict(cfg["variant_params"]), teacher is not None, ensemble_teacher)

    model = MLP(cfg["widths"], members=k, seeds=seeds, dropout_input=cfg["dropout_input"],
                dropout_hidden=cfg["dropout_hidden"], max_norm=cfg["max_norm"]).to(device)
    if cfg["init_from"] is not None:
        init_from_model(model, cfg["init_from"], cfg["init_members"] or list(range(k)), cfg["class_subset"])
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                          weight_decay=cfg["weight_decay"])
    n, bs = (tr_idx.shape[0] if subset is None else subset["epoch_size"]), cfg["batch_size"]
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * cfg["epochs"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg, s, total_steps, steps_per_epoch))
    orders = [torch.Generator().manual_seed(1_000_003 * s + 17) for s in seeds]
    torch.manual_seed(seeds[0])  # dropout masks and jitter
    history = {"train_loss": [], "train_terms": [], "val_errors": [], "epoch_seconds": [], "seconds_before": 0.0}
    start_epoch = 0
    best = {"errors": [math.inf] * k, "epoch": [0] * k,
            "state": {n_: t.detach().clone() for n_, t in model.state_dict().items()}} if cfg["keep_best"] else None

    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if (ck["config_hash"] == chash and ck["seeds"] == list(seeds)
                and ck.get("data") == train_split.fingerprint):
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            for g, st in zip(orders, ck["orders"]):
                g.set_state(st)
            torch.set_rng_state(ck["rng_cpu"])
            if device.type == "cuda" and ck.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(ck["rng_cuda"], device)
            history, start_epoch, best = ck["history"], ck["epoch"], ck.get("best")
            # the interrupted process's time up to its last checkpoint counts towards wall_seconds
            history["seconds_before"] = history.get("seconds_before", 0.0) + ck.get("seconds_in_process", 0.0)
            print(f"kdbench: {name}: resuming after epoch {start_epoch}")
        else:
            print(f"kdbench: {name}: the checkpoint there was made with another config, seeds or data; starting over")

    bar = tqdm(range(start_epoch, cfg["epochs"]), desc=name, disable=not progress, leave=False)
    for epoch in bar:
        t_epoch = time.perf_counter()
        model.train()
        if subset is None:
            perm = torch.stack([torch.randperm(n, generator=g) for g in orders]).to(device)
            perm = tr_idx[perm]  # (K, n) indices into the full training split
        else:
            perm = torch.stack([_subset_epoch(subset, g) for g in orders]).to(device)
        sums, count = None, 0
        for step in range(steps_per_epoch):
            idx = perm[:, step * bs:(step + 1) * bs]
            xb = train_split.inputs(idx, cfg["jitter"])
            yb = train_split.y[idx]
            tb = None if teacher is None else teacher_batch(teacher, idx, cfg["teacher_pairing"])
            terms = loss_fn(model(xb), yb, tb)
            stacked = torch.stack(list(terms.values()))  # (terms, K)
            opt.zero_grad(set_to_none=True)
            stacked.sum().backward()
            if cfg["grad_clip"]:
                _clip_per_member(params, cfg["grad_clip"])
            opt.step()
            sched.step()
            model.apply_max_norm()
            w = idx.shape[1]
            sums = stacked.detach() * w if sums is None else sums + stacked.detach() * w
            count += w
            if (step + 1) % cfg["check_every"] == 0 or step == steps_per_epoch - 1:
                _check_finite(sums, list(terms), seeds, name, epoch, step)
        mean_terms = (sums / count).cpu()  # (terms, K)
        val_err = ([r["errors"] for r in error_summary(predict_split(model, train_split, val_idx, ebs), y_val)]
                   if len(val_idx) else [None] * k)
        if best is not None:
            _keep_best(model, best, val_err, epoch)
        history["train_terms"].append({t: mean_terms[i].tolist() for i, t in enumerate(terms)})
        history["train_loss"].append(mean_terms.sum(0).tolist())
        history["val_errors"].append(val_err)
        history["epoch_seconds"].append(time.perf_counter() - t_epoch)
        atomic_torch_save(ckpt_path, {
            "config_hash": chash, "seeds": list(seeds), "data": train_split.fingerprint, "epoch": epoch + 1,
            "history": history, "seconds_in_process": time.perf_counter() - t_start,
            "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "best": best,
            "orders": [g.get_state() for g in orders], "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})
        bar.set_postfix(loss=f"{mean_terms.sum(0).mean():.4f}",
                        val_err=("-" if val_err[0] is None else f"{sum(val_err) / k:.0f}"))
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)

    if best is not None:
        model.load_state_dict(best["state"])
    val_logits = predict_split(model, train_split, val_idx, ebs)
    test_logits = predict_split(model, test_split, test_all, ebs)
    test = error_summary(test_logits, test_split.y)
    train_logits, y_train = predict_split(model, train_split, tr_idx, ebs), train_split.y[tr_idx]
    train_acc = [r["accuracy"] for r in error_summary(train_logits, y_train)]
    at_chance = _check_learned(train_logits, y_train, seeds, name)
    atomic_torch_save(out_dir / "model.pt", {"model_config": model.config(), "train_config": cfg,
                                             "state_dict": model.state_dict()})
    groups = ({"val_groups": train_split.groups[val_idx].cpu(), "test_groups": test_split.groups.cpu()}
              if train_split.groups is not None else {})
    atomic_torch_save(out_dir / "logits.pt", {"val": val_logits.cpu(), "val_idx": val_idx.cpu(),
                                              "val_labels": y_val.cpu(), "test": test_logits.cpu(),
                                              "test_labels": test_split.y.cpu(), "seeds": list(seeds), **groups})
    wall = history["seconds_before"] + time.perf_counter() - t_start  # all processes of a resumed run
    common = {"name": name, "config": cfg, "config_hash": chash, "git_commit": git_commit(),
              "versions": package_versions(), "device": device_description(device), "wall_seconds": wall,
              "members_trained_together": k, "variant_module_sha256": module_hashes,
              "epochs": cfg["epochs"], "train_examples": n, "resumed_after_epoch": start_epoch,
              "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
              "val_examples": int(len(val_idx)), "epoch_seconds": history["epoch_seconds"]}
    records = []
    for m, seed in enumerate(seeds):
        rec = {**common, "seed": seed,
               "train_loss": [e[m] for e in history["train_loss"]],
               "train_terms": [{t: v[m] for t, v in e.items()} for e in history["train_terms"]],
               "val_errors": [e[m] for e in history["val_errors"]],
               "final_epoch": best["epoch"][m] if best is not None else cfg["epochs"],
               **({} if subset is None else {"subset_natural_fraction": subset["natural_fraction"],
                                             "dustbin_logit_shift": subset["dustbin_shift"]}),
               "train_accuracy": train_acc[m], "at_chance": at_chance[m],
               "test_errors": test[m]["errors"], "test_accuracy": test[m]["accuracy"],
               "test_per_class_errors": test[m]["per_class_errors"],
               "test_per_class_counts": test[m]["per_class_counts"]}
        atomic_write_json(out_dir / f"seed{seed}" / "metrics.json", rec)
        records.append(rec)
    ckpt_path.unlink(missing_ok=True)
    return records


@torch.no_grad()
def _keep_best(model: MLP, best: dict, val_err: list[int], epoch: int) -> None:
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
    """A member that gives one answer for 99% of its transfer set (whose classes are more mixed) has diverged: stop the run
    before its numbers can enter a table as a normal result. A member whose balanced accuracy there (the mean recall
    over the classes present) is within 2 points of a constant answer's, 1/classes, is returned as at chance: its
    record says so and the log warns (tiny smoke budgets get there without diverging). Balanced, so that a
    specialist trained on a resampled transfer set is judged on every class, not on its dustbin's share."""
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


@torch.no_grad()
def teacher_logits(model_path: Path | str, out_path: Path | str, root: Path | str | None = None,
                   device: str | None = None, batch_size: int = 4096, members: list[int] | None = None
                   ) -> torch.Tensor:
    """Logits (M, N, C) of every member of a trained model on the whole un-jittered training split, saved once so
    that students read them instead of running the teacher (transfer sets index into them)."""
    device = pick_device(device)
    blob = torch.load(model_path, map_location=device, weights_only=False)
    model_config, state = blob["model_config"], blob["state_dict"]
    if members is not None:  # only the chosen members run (every state tensor is member-major)
        idx = list(members)
        model_config = {**model_config, "members": len(idx), "seeds": [model_config["seeds"][i] for i in idx]}
        state = {k: v[idx] for k, v in state.items()}
    model = MLP(**model_config).to(device)
    model.load_state_dict(state)
    dataset = blob["train_config"]["dataset"]
    split = kdata.load(dataset, train=True, root=root, device=device)
    logits = predict_split(model, split, torch.arange(len(split), device=device), batch_size).cpu()
    atomic_torch_save(out_path, {"logits": logits, "dataset": dataset, "source": str(model_path), "members": members,
                                 "train_config_hash": config_hash(blob["train_config"])})
    return logits
