"""Which training examples a run sees, and in which order: the transfer set, the validation split, the epoch orders.

What this file achieves: `training_indices` carves a run's transfer set and validation split out of the full training
split (seeded; whole utterances for speech; only some classes; a seeded fraction). `EpochSampler` gives each of the K
members its own seeded order every epoch: a permutation of the transfer set, or, for a specialist (`class_subset`),
every example of its classes plus others drawn afresh so that the subset makes up `subset_fraction` of the epoch; with
`bootstrap`, each member's epoch is a permutation of its own resample of the transfer set (drawn with replacement once,
from the member's seed, so a resumed run draws the same). `specialist_labels` maps labels to the specialist's outputs
(its classes, then one dustbin) without touching the split. Everything stays on the device as index tensors; no
per-example Python.
"""
from __future__ import annotations

import math

import torch

from kdbench.data import datasets as kdata
from kdbench.data import speech
from kdbench.spec import DataSpec


def training_indices(data: DataSpec, train_labels: torch.Tensor, groups: torch.Tensor | None = None,
                     speakers: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(transfer-set indices, validation indices) into the full training split, both seeded; with groups (speech
    utterances) validation holds out val_size whole groups; with `val_speakers` those speakers leave training
    altogether and the val_size validation utterances are drawn from them alone."""
    n = train_labels.shape[0]
    if data.val_speakers:
        tr, val = speaker_split(data, groups, speakers)
    else:
        tr, val = kdata.validation_split(n, data.val_size, data.val_seed, groups)
    if data.transfer_classes is not None:
        keep = torch.isin(train_labels.cpu()[tr], torch.tensor(data.transfer_classes))
        tr = tr[keep]
    if data.train_fraction < 1.0:
        g = torch.Generator().manual_seed(data.fraction_seed)
        m = max(1, round(data.train_fraction * tr.shape[0]))
        tr = tr[torch.randperm(tr.shape[0], generator=g)[:m]].sort().values
    return tr, val


def speaker_split(data: DataSpec, groups: torch.Tensor, speakers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices: every frame of the other speakers, validation indices: val_size whole utterances of the
    val_speakers)."""
    if speakers is None:
        raise ValueError("val_speakers needs a speech split (its frames carry their speakers)")
    wanted = torch.tensor([speech.SPEAKERS.index(s) for s in data.val_speakers])
    held = torch.isin(speakers.cpu(), wanted)
    pool, cand = (~held).nonzero().flatten(), held.nonzero().flatten()
    _, val = kdata.validation_split(cand.shape[0], data.val_size, data.val_seed, groups.cpu()[cand])
    return pool, cand[val].sort().values


def specialist_labels(classes: list[int], labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels as a specialist's outputs: class_subset[i] -> i, every other class -> the dustbin len(classes)."""
    keep = torch.tensor(classes, device=labels.device)
    remap = torch.full((num_classes,), len(classes), dtype=torch.long, device=labels.device)
    remap[keep] = torch.arange(len(classes), device=labels.device)
    return remap[labels]


def dustbin_shift(natural: float, trained: float) -> float:
    """The logit to add to a specialist's dustbin at test time: its prior odds against the subset were
    (1-trained)/trained in training and are (1-natural)/natural in the data."""
    return math.log(((1 - natural) / natural) / ((1 - trained) / trained))


class ClassSubsetView:
    """What a net trained on `classes` with a catch-all last output (a specialist) sees of the data: its labels
    (`specialist_labels`), epochs drawing `fraction` of their examples from the subset (else the natural draw), and
    the per-output logit offset that undoes the changed prior when it is judged (`dustbin_shift` on the catch-all
    output; None when the draw is natural). `record` is what its run records say about it."""

    def __init__(self, classes: list[int], fraction: float | None, y_train: torch.Tensor, y_test: torch.Tensor,
                 tr_idx: torch.Tensor, seeds: list[int]):
        num = int(max(y_train.max(), y_test.max())) + 1
        in_subset = torch.isin(y_train[tr_idx], torch.tensor(classes, device=y_train.device))
        natural = float(in_subset.float().mean())
        shift = 0.0 if fraction is None else dustbin_shift(natural, fraction)
        self.y_train, self.y_test = specialist_labels(classes, y_train, num), specialist_labels(classes, y_test, num)
        self.sampler = EpochSampler(tr_idx, seeds, in_subset if fraction is not None else None, fraction)
        self.logit_offset = None
        if shift:
            self.logit_offset = torch.zeros(len(classes) + 1, device=y_train.device)
            self.logit_offset[-1] = shift
        self.record = {"subset_natural_fraction": natural, "dustbin_logit_shift": shift}


class EpochSampler:
    """Per-member epoch orders (K, epoch_size) of indices into the full training split, from K seeded generators
    whose state a checkpoint keeps."""

    def __init__(self, tr_idx: torch.Tensor, seeds: list[int], in_subset: torch.Tensor | None = None,
                 subset_fraction: float | None = None, bootstrap: bool = False):
        self.tr_idx = tr_idx
        self.orders = [torch.Generator().manual_seed(1_000_003 * s + 17) for s in seeds]
        self.subset = None
        self.bags = None
        if bootstrap:
            n = tr_idx.shape[0]
            draws = [torch.randint(n, (n,), generator=torch.Generator().manual_seed(7_919 * s + 3)) for s in seeds]
            self.bags = tr_idx[torch.stack(draws).to(tr_idx.device)]  # (K, n)
        if in_subset is not None and subset_fraction is not None:
            inside, outside = tr_idx[in_subset], tr_idx[~in_subset]
            f = subset_fraction
            n_out = min(outside.shape[0], round(inside.shape[0] * (1 - f) / f))
            self.subset = {"inside": inside, "outside": outside, "n_out": n_out}
        self.epoch_size = (tr_idx.shape[0] if self.subset is None
                           else self.subset["inside"].shape[0] + self.subset["n_out"])

    def epoch(self) -> torch.Tensor:
        if self.bags is not None:
            perm = torch.stack([torch.randperm(self.bags.shape[1], generator=g) for g in self.orders])
            return torch.gather(self.bags, 1, perm.to(self.bags.device))
        if self.subset is None:
            perm = torch.stack([torch.randperm(self.tr_idx.shape[0], generator=g) for g in self.orders])
            return self.tr_idx[perm.to(self.tr_idx.device)]
        return torch.stack([self._subset_epoch(g) for g in self.orders])

    def _subset_epoch(self, g: torch.Generator) -> torch.Tensor:
        s = self.subset
        pick = s["outside"][torch.randperm(s["outside"].shape[0], generator=g)[:s["n_out"]].to(s["outside"].device)]
        epoch = torch.cat([s["inside"], pick])
        return epoch[torch.randperm(epoch.shape[0], generator=g).to(epoch.device)]

    def state(self) -> list:
        return [g.get_state() for g in self.orders]

    def load_state(self, states: list) -> None:
        for g, st in zip(self.orders, states):
            g.set_state(st)
