"""What a student learns from: cached teacher logits, and for feature-based variants the teacher's hidden features.

What this file achieves: `cache_logits` runs a trained model once over the whole un-jittered training split and
saves its logits (M, N, C), so students read them instead of running the teacher every step. `Teacher` serves a
student batch: the logits of the examples each member sees, paired (member k <- teacher k), grouped (member k <-
its own G teachers) or as a whole ensemble (every member <- all M), and, when the KD variant asks for features
(`Variant.features`), the hidden features of one teacher net per member on the very inputs the student sees. A run
with `mixup` has no cache to read (its inputs are new every step): its teacher nets (`teacher_model`) run on the
mixed inputs each step, with the same pairings ("live"). A specialist (`class_subset`) learning from its generalist
(the paper's section 6.1) reads the generalist's logits collapsed onto its own outputs (`collapse_to_subset`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from kdbench.data import registry as data_registry
from kdbench.engine import losses, models
from kdbench.records import atomic_torch_save, config_hash
from kdbench.spec import DistillSpec, TrainSpec


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


def collapse_to_subset(logits: torch.Tensor, classes: list[int], temperature: float) -> torch.Tensor:
    """Teacher logits (..., C) -> (..., n+1) over the outputs of a net trained on a class subset (its n classes, a
    catch-all last), exact at `temperature`: softmax(out / T) gives each class of the subset the teacher's tempered
    probability and the catch-all the sum of every other class's."""
    keep = torch.tensor(classes, device=logits.device)
    rest = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
    rest[keep] = False
    dust = temperature * torch.logsumexp(logits[..., rest] / temperature, -1, keepdim=True)
    return torch.cat([logits[..., keep], dust], -1)


def load_logits(dist: DistillSpec, device: torch.device, n_train: int, members: int) -> torch.Tensor:
    """The cached logits of `dist.teacher_logits`, checked against the split and the pairing, shaped for
    `teacher_batch`."""
    blob = torch.load(dist.teacher_logits, map_location="cpu")
    t = blob["logits"].to(device=device, dtype=torch.float32)  # (M, N, C)
    if t.shape[1] != n_train:
        raise ValueError(f"teacher logits {dist.teacher_logits} cover {t.shape[1]} examples, "
                         f"the training split has {n_train}")
    if dist.teacher_pairing == "paired" and t.shape[0] != members:
        raise ValueError(f"paired teacher needs one teacher member per seed: {t.shape[0]} members, {members} seeds")
    if dist.teacher_pairing == "grouped":
        if t.shape[0] % members:
            raise ValueError(f"grouped teacher: {t.shape[0]} teacher members do not split into {members} groups")
        t = t.reshape(members, t.shape[0] // members, *t.shape[1:])  # (K, G, N, C)
    return t


class Teacher:
    """A run's teacher: None-safe access to its cached logits and, for feature variants, its hidden features."""

    def __init__(self, spec: TrainSpec, device: torch.device, n_train: int, members: int,
                 logit_offset: torch.Tensor | None = None):
        """`logit_offset` (per student output) is subtracted from the soft targets: the student trains under a
        prior that the offset undoes when it is judged, and its soft targets carry that prior, as its labels do."""
        dist, subset = spec.distillation, spec.data.class_subset
        variant = losses.get(dist.variant)
        self.pairing = dist.teacher_pairing
        self.logits = None
        self.net = None
        # with mixup the student sees inputs no cache holds: the teacher nets run on them, every step
        self.live = bool(spec.data.mixup) and variant.needs_teacher
        if self.live:
            if subset is not None or dist.teacher_logits is not None:
                raise ValueError(f"mixup with variant {dist.variant!r} runs the teacher on the mixed inputs: set "
                                 f"teacher_model (and teacher_members), not teacher_logits; a specialist "
                                 f"(class_subset) cannot learn from a teacher on mixed inputs yet")
            self.net = self._load_net(dist, device, members)
        elif variant.needs_teacher:
            if dist.teacher_logits is None:
                raise ValueError(f"variant {dist.variant!r} needs teacher logits: set teacher_logits to a cache "
                                 f"file")
            self.logits = load_logits(dist, device, n_train, members)
            if subset is not None:
                t = float({**variant.defaults, **dist.variant_params}.get("temperature", 1.0))
                self.logits = collapse_to_subset(self.logits, subset, t)
            if logit_offset is not None:
                self.logits = self.logits - logit_offset
        if variant.features:  # one teacher net per member (a live teacher's nets too: pair them)
            self.net = self.net or self._load_net(dist, device, members)
            if self.net.members != members:
                raise ValueError(f"teacher_members picks {self.net.members} teacher nets for {members} seeds")

    def _load_net(self, dist: DistillSpec, device: torch.device, members: int):
        if dist.teacher_model is None:
            raise ValueError(f"variant {dist.variant!r} runs the teacher net (it learns from its features, or "
                             f"mixup mixes its inputs): set teacher_model to the teacher's model.pt")
        chosen = dist.teacher_members
        if chosen is None and (self.pairing == "paired" or not self.live):  # else every net of the model teaches
            chosen = list(range(members))
        net = models.load(dist.teacher_model, chosen, device).eval()
        net.requires_grad_(False)
        if self.pairing == "paired" and net.members != members or self.pairing == "grouped" and net.members % members:
            raise ValueError(f"{self.pairing} teacher: {net.members} teacher nets do not fit {members} seeds")
        return net

    @property
    def active(self) -> bool:
        """Whether the student has a teacher's logits to learn from (cached, or computed live)."""
        return self.live or self.logits is not None

    @property
    def grouped(self) -> bool:
        return self.active and self.pairing in ("ensemble", "grouped")

    def batch(self, idx: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor | None:
        """Teacher logits of the examples idx (K, B), shaped as `teacher_batch` gives them; a live teacher computes
        them on the inputs x (K, B, D) each member sees."""
        if self.live:
            return self._run(x)
        return None if self.logits is None else teacher_batch(self.logits, idx, self.pairing)

    @torch.no_grad()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        k, b = x.shape[:2]
        m = self.net.members
        if self.pairing == "paired":
            return self.net(x)  # (K, B, C)
        if self.pairing == "grouped":  # teacher nets k*G .. k*G+G-1 see member k's inputs
            return self.net(x.repeat_interleave(m // k, 0)).view(k, m // k, b, -1).transpose(0, 1)  # (G, K, B, C)
        return self.net(x.reshape(1, k * b, -1).expand(m, -1, -1)).view(m, k, b, -1)  # every net, every member

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, H) last hidden layer of teacher net k on member k's inputs x (K, B, D)."""
        return self.net(x, hidden=True)[1]


@torch.no_grad()
def cache_logits(model_path: Path | str, out_path: Path | str, root: Path | str | None = None,
                 device: torch.device | str = "cpu", batch_size: int = 4096, members: list[int] | None = None
                 ) -> torch.Tensor:
    """Logits (M, N, C) of every member (or the chosen ones) of a trained model on the whole un-jittered training
    split, saved once so that students read them instead of running the teacher (transfer sets index into them)."""
    blob = torch.load(model_path, map_location="cpu", weights_only=False)
    model = models.from_saved(blob, members, device, where=model_path)
    dataset = blob["train_config"]["dataset"]
    split = data_registry.load(dataset, train=True, root=root, device=device)
    logits = models.predict_split(model, split, torch.arange(len(split), device=device), batch_size).cpu()
    atomic_torch_save(out_path, {"logits": logits, "dataset": dataset, "source": str(model_path), "members": members,
                                 "train_config_hash": config_hash(blob["train_config"])})
    return logits
