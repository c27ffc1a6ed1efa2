"""Run records: atomic writes, config hashes, the provenance every metrics.json carries, and the typed spec of a
record's config (`record_spec`: how an old record reads into today's `kdbench.spec.TrainSpec`, its file untouched)."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy
import torch

from kdbench import __version__
from kdbench.spec import DEFAULTS, KEYS, TrainSpec


def default_mode() -> int:
    """The mode a plain open() would give a new file under the current umask (0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode())  # mkstemp's 0600 would make every result private to its writer
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: Path | str):
    """An exclusive advisory lock on `path` (created if missing) for the duration of the block: concurrent jobs that
    fill the same data folder take turns, and the second finds the first's verified files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_RUN_LOCK: list = []  # the open lock file of this process's workflow run, held until the process ends


class RunningElsewhere(RuntimeError):
    pass


def hold_run_lock(workdir: Path | str = ".") -> None:
    """Lock the working directory for this workflow run until the process ends (the kernel drops the lock when it
    exits, even on kill -9), so a second run started beside a live one stops at once with what to do, even after
    `snakemake --unlock` removed snakemake's own lock (which does not stop the first run)."""
    if _RUN_LOCK:
        return
    path = Path(workdir) / ".snakemake" / "kdbench-run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunningElsewhere(
            f"another workflow run ({holder}) is still working in {Path(workdir).resolve()}. Fix: wait for it to "
            f"finish, or stop it (Ctrl-C in its terminal, or kill its pid) and then rerun; `snakemake --unlock` "
            f"only removes snakemake's lock, it does not stop that run") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _RUN_LOCK.append(f)


def atomic_write_json(path: Path | str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: Path | str, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def record_spec(config: dict) -> TrainSpec:
    """The typed spec of the flat config a run record holds (`metrics.json`, `config.json`); the file is never
    rewritten. A key the record predates holds its default: a key joins the spec only with a default that does what
    runs did before it existed (so far `extensions`, `model_params` and `val_every`, absent from the oldest committed
    records). A key the spec no longer has is refused (ValueError), never dropped: that run trained something the
    spec cannot say."""
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ValueError(f"key(s) {unknown} that no training spec has")
    return TrainSpec.from_config({**DEFAULTS, **config})


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


# what a run's commit stamp vouches for: the code and configuration it ran, not the results the workflow writes
STAMPED_PATHS = ["kdbench", "config", "workflow", "Snakefile", "pyproject.toml", "profiles", ".test"]


def cited_records(source: Path | str) -> tuple[list[Path], Path]:
    """The committed files a table's source stands for, and the folder their names are taken from: the cited file
    itself; for a file a run writes beside its records and git does not keep (`logits.pt`), that run folder's records
    (its `*.json`); for a folder (a specialists run), every `*.json` under it. No files where the source does not
    exist."""
    src = Path(source)
    if src.is_dir():
        return sorted(src.rglob("*.json")), src
    if src.suffix == ".pt":
        return sorted(src.parent.rglob("*.json")), src.parent
    return ([src] if src.is_file() else []), src.parent


def run_identity(source: Path | str) -> str | None:
    """What a provenance row pins of the run it cites, so that a table made before the run was retrained is found
    out: the sha256 (16 hex digits) of its `cited_records`, with their paths. Retraining changes them (a record holds
    its wall time). None where there is nothing to hash (a cited file that does not exist)."""
    files, base = cited_records(source)
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(base)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def git_commit(where: Path | str | None = None) -> str:
    """HEAD of the checkout that holds the kdbench package that runs (or `where`), with "-dirty" when its code or
    configuration (`STAMPED_PATHS`) differ from that commit; changes under results/ or docs/ don't count."""
    here = Path(where) if where else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        top, sha = head.stdout.splitlines()
        root = Path(top)
        paths = [p for p in STAMPED_PATHS if (root / p).exists()]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", *paths], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = "\n".join(line for line in dirty.splitlines() if not line.endswith("__pycache__/"))
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict:
    """Versions of what a run used; torchvision's from its metadata (importing it costs about a second)."""
    try:
        vision = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        vision = "not installed"
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": vision,
            "numpy": numpy.__version__, "kdbench": __version__}


def device_description(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} threads"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux) and the widest vector unit torch uses, e.g. 'AMD EPYC (AVX2)'."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        return f"{name} ({torch.backends.cpu.get_cpu_capability()})"
    except AttributeError:
        return name


def speed_row(case: str, device: str, seconds: float, steps: int, ref_case: str | None = None,
              ref_seconds: float | None = None) -> dict:
    """One row of a benchmark CSV (seconds per epoch and the speed ratio to a reference case), printed as well."""
    ratio = (ref_seconds / seconds) if ref_seconds else 1.0
    print(f"{case:<40} {seconds:9.3f} s/epoch   x{ratio:6.2f} vs {ref_case or 'itself'}", flush=True)
    return dict(case=case, device=device, seconds_per_epoch=round(seconds, 4), ratio_vs_reference=round(ratio, 2),
                reference_case=ref_case or case, steps_timed=steps)
