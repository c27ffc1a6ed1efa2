"""The smoke workflow through the shipped SLURM profile on a real single-node cluster equals a local run.

    sudo python -m pytest -m slurm          # about 15 minutes on 2 cores; needs root (apt-get, daemons)

It brings up Slurm 22.05 with munge on this machine (`tests/slurm_cluster.py`: no accounting database, no cgroups),
runs the smoke profile once locally (`--cores 2`) and once with `--profile profiles/slurm` exactly as shipped, then
asserts that every training job ran as a SLURM job (each metrics.json carries its SLURM_JOB_ID, each job left the
plugin's log) and that every result equals the local run's: tables and CSVs byte for byte, logits and weights
tensor for tensor, metrics.json key for key except timings and the job id. It stops the daemons and removes its
slurm.conf whatever happens. Set KDBENCH_SLURM_RECORD=FILE to keep the run's record as JSON.
Not part of the default run (CI has neither root nor the time): `-m slurm` selects it.
"""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from slurm_cluster import ClusterError, SingleNodeCluster
from workflow_helpers import REPO, snakemake

pytestmark = pytest.mark.slurm

TIMING_KEYS = {"wall_seconds", "epoch_seconds", "slurm_job_id"}  # differ between any two runs, or by design


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the SLURM test needs root: it installs slurm-wlm and munge and starts their daemons")
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("the SLURM executor plugin is missing: pip install -e '.[slurm]'")
    c = SingleNodeCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except ClusterError as e:
        c.stop()
        pytest.fail(f"could not bring up the test cluster: {e}")
    yield c
    c.stop()


def _files(results: Path) -> dict[str, Path]:
    """Every result file of a run, by its path under results/smoke; job logs and timings (benchmarks/) excluded."""
    return {p.relative_to(results).as_posix(): p for p in sorted(results.rglob("*"))
            if p.is_file() and p.relative_to(results).parts[0] not in ("logs", "benchmarks")}


def _same_tensors(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def _untimed(text: str) -> str:
    return re.sub(r"\b\d+(\.\d+)? (min|s) of wall time", "<time> of wall time", text)


def compare_runs(local: Path, slurm: Path) -> dict:
    """{"identical": [...], "equal_but_timings": [...], "different": [...]} over the union of both runs' files."""
    a, b = _files(local), _files(slurm)
    out = {"only_local": sorted(set(a) - set(b)), "only_slurm": sorted(set(b) - set(a)), "identical": [],
           "equal_but_timings": [], "different": []}
    for name in sorted(set(a) & set(b)):
        if a[name].read_bytes() == b[name].read_bytes():
            out["identical"].append(name)
        elif name.endswith(".json"):
            ja, jb = (json.loads(p.read_text()) for p in (a[name], b[name]))
            strip = (lambda d: {k: v for k, v in d.items() if k not in TIMING_KEYS}) if isinstance(ja, dict) else None
            same = strip is not None and strip(ja) == strip(jb)
            out["equal_but_timings" if same else "different"].append(name)
        elif name.endswith(".md"):  # tables say how long the jobs took
            same = _untimed(a[name].read_text()) == _untimed(b[name].read_text())
            out["equal_but_timings" if same else "different"].append(name)
        elif name.endswith(".pt"):
            same = _same_tensors(torch.load(a[name], weights_only=False), torch.load(b[name], weights_only=False))
            out["identical" if same else "different"].append(name)  # same tensors, other pickle framing
        else:
            out["different"].append(name)
    return out


def test_smoke_workflow_through_the_slurm_profile_equals_a_local_run(cluster, tmp_path, all_data_root):
    t0 = time.time()
    local = snakemake(tmp_path / "local", data_root=all_data_root)
    assert local.returncode == 0, local.stderr[-3000:]
    t_local = time.time() - t0

    t0 = time.time()
    via = snakemake(tmp_path / "slurm", "--profile", str(REPO / "profiles" / "slurm"), data_root=all_data_root,
                    cores=False)
    t_slurm = time.time() - t0
    assert via.returncode == 0, (via.stdout[-3000:] + via.stderr[-3000:])

    local_res, slurm_res = tmp_path / "local" / "results" / "smoke", tmp_path / "slurm" / "results" / "smoke"
    metrics = sorted(slurm_res.rglob("metrics.json"))
    job_ids = {json.loads(p.read_text())["slurm_job_id"] for p in metrics}
    # every training job ran inside a SLURM job (seeds of one job share its id), none of the local ones did
    assert None not in job_ids, [str(p) for p in metrics if json.loads(p.read_text())["slurm_job_id"] is None]
    assert {json.loads(p.read_text())["slurm_job_id"] for p in local_res.rglob("metrics.json")} == {None}
    run_dirs = {p.parent.parent for p in metrics}
    assert len(job_ids) == len(run_dirs), "two training jobs shared one SLURM job"
    submitted = len(re.findall(r"_slurm_rpc_submit_batch_job: JobId=\d+",
                               (cluster.dir / "log" / "slurmctld.log").read_text()))
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True)
    assert queue.returncode == 0 and queue.stdout.strip() == "", "jobs left in the queue"

    diff = compare_runs(local_res, slurm_res)
    record = {"cluster": "single node, Slurm 22.05 (Debian slurm-wlm), no accounting", "profile": "profiles/slurm",
              "config": ".test/config.yaml", "local_seconds": round(t_local, 1), "slurm_seconds": round(t_slurm, 1),
              "training_jobs_via_slurm": len(run_dirs), "slurm_batch_jobs_submitted": submitted,
              "result_files_compared": sum(len(v) for k, v in diff.items() if k not in ("only_local", "only_slurm")),
              **{k: (v if k == "different" or k.startswith("only") else len(v)) for k, v in diff.items()}}
    print(json.dumps(record, indent=2))
    if os.environ.get("KDBENCH_SLURM_RECORD"):
        Path(os.environ["KDBENCH_SLURM_RECORD"]).write_text(json.dumps(record, indent=2) + "\n")
    assert not diff["only_local"] and not diff["only_slurm"], diff
    assert not diff["different"], diff["different"]
    assert submitted >= len(run_dirs)  # slurmctld's own log: every training job and the other cluster jobs
