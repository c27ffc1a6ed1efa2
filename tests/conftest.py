import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The offline mirror: $KDBENCH_MIRROR, else ../shared/data beside the repository (as CI lays it out)."""
    path = Path(os.environ.get("KDBENCH_MIRROR", REPO.parent / "shared" / "data"))
    if not (path / "MNIST" / "raw").exists():
        pytest.fail(f"no offline data mirror at {path}: set KDBENCH_MIRROR to the folder holding MNIST/raw")
    return path


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, mirror) -> Path:
    """A data directory filled once from the mirror (MNIST and Fashion-MNIST), shared by the tests."""
    from kdbench import data
    root = tmp_path_factory.mktemp("data")
    for name in ("mnist", "fashion_mnist"):
        data.fetch(name, root, mirror=mirror, allow_download=False, allow_pypi=False)
    return root
