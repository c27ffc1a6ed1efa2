"""A throwaway single-node SLURM cluster on this machine, for `tests/test_slurm.py`.

What this file achieves: `SingleNodeCluster(workdir)` installs Debian's `slurm-wlm` and `munge` if they are missing
(apt-get, needs root), writes a slurm.conf for this host only (no systemd, no cgroups, no accounting database:
`proctrack/linuxproc`, `task/none`, `select/cons_tres` with `CR_Core_Memory`, the node line from `slurmd -C`), starts
`munged` as the munge user, then `slurmctld` and `slurmd`, and waits until the node is idle. Everything the daemons
write lives under `workdir`; `stop()` kills the three daemons, so nothing keeps running after the test. The config
goes where every Slurm command looks for it, /etc/slurm/slurm.conf (snakemake's job-step plugin drops SLURM_CONF
from the environment of the `srun` it runs inside each job); `stop()` removes it again. A slurm.conf that is not
ours is never touched: the cluster refuses to start instead.

    python tests/slurm_cluster.py up DIR     # bring one up by hand (prints the SLURM_CONF to export)
    python tests/slurm_cluster.py down DIR
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
PARTITION = "debug"
CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# kdbench test cluster: tests/slurm_cluster.py writes and removes this file"


class ClusterError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    return [name for name, path in DAEMONS.items() if not Path(path).exists()]


def install() -> None:
    """apt-get the two packages (only what is missing); needs root and Debian's package index."""
    if not missing_tools():
        return
    if os.geteuid() != 0:
        raise ClusterError(f"slurm and munge are not installed and installing them needs root: "
                           f"apt-get install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            raise ClusterError(f"`{' '.join(cmd)}` failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def node_line() -> str:
    """This host's NodeName line as slurmd itself reports it (CPUs, sockets, cores, RealMemory)."""
    out = subprocess.run(["/usr/sbin/slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


class SingleNodeCluster:
    def __init__(self, workdir: Path | str):
        self.dir = Path(workdir).resolve()
        self.conf = CONF
        self.pids: dict[str, int] = {}

    # -- set-up --------------------------------------------------------------------------------------------------
    def write_config(self) -> None:
        node = node_line()
        host = node.split()[0].split("=", 1)[1]
        for d in ("state", "spool", "log"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        if self.conf.exists() and not self.conf.read_text().startswith(MARKER):
            raise ClusterError(f"{self.conf} exists and is not a kdbench test cluster's: this machine has a Slurm "
                               f"configuration of its own, which the test will not replace")
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join([
            MARKER,
            "ClusterName=kdbench-test",
            f"SlurmctldHost={host}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"StateSaveLocation={self.dir / 'state'}",
            f"SlurmdSpoolDir={self.dir / 'spool'}",
            f"SlurmctldPidFile={self.dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.dir / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.dir / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.dir / 'log' / 'slurmd.log'}",
            "SlurmctldPort=6817",
            "SlurmdPort=6818",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "DefMemPerCPU=1000",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "SlurmdTimeout=120",
            "InactiveLimit=0",
            "KillWait=5",
            node + " State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _start_munge(self) -> None:
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
            return  # already running (a user's own munge): use it, leave it alone
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["/usr/sbin/mungekey", "--create"], check=True)
            shutil.chown(key, "munge", "munge")
        # munged runs as the munge user, who may not enter a private temporary folder: its files go to /run/munge
        log, pid_file = run_dir / "kdbench-test-munged.log", run_dir / "kdbench-test-munged.pid"
        pid_file.unlink(missing_ok=True)
        subprocess.run(["runuser", "-u", "munge", "--", DAEMONS["munged"], f"--log-file={log}",
                        f"--pid-file={pid_file}"], check=True)
        for _ in range(50):
            if pid_file.exists() and pid_file.read_text().strip():
                self.pids["munged"] = int(pid_file.read_text())
                return
            time.sleep(0.1)
        raise ClusterError(f"munged did not start; see {log}")

    def start(self, timeout: float = 60.0) -> None:
        if os.geteuid() != 0:
            raise ClusterError("a local SLURM cluster needs root (the daemons run as root here)")
        install()
        self.write_config()
        self._start_munge()
        for name in ("slurmctld", "slurmd"):
            # -i: ignore state left by an earlier cluster in this folder
            subprocess.run([DAEMONS[name], "-i"] if name == "slurmctld" else [DAEMONS[name]], check=True)
            pid_file = self.dir / f"{name}.pid"
            for _ in range(100):
                if pid_file.exists() and pid_file.read_text().strip():
                    break
                time.sleep(0.1)
            else:
                raise ClusterError(f"{name} did not start; see {self.dir / 'log'}")
            self.pids[name] = int(pid_file.read_text())
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip() in ("idle", "mix", "alloc"):
                return
            time.sleep(1)
        raise ClusterError(f"the node never became idle (sinfo: {r.stdout.strip() or r.stderr.strip()}); "
                           f"logs in {self.dir / 'log'}")

    # -- tear-down -----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel what is queued, then stop slurmd, slurmctld and the munged this cluster started."""
        if self.conf.exists() and self.conf.read_text().startswith(MARKER):
            subprocess.run(["scancel", "--full", "--partition", PARTITION], capture_output=True)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        if self.conf.exists() and self.conf.read_text().startswith(MARKER):
            self.conf.unlink()

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    what, folder = sys.argv[1], Path(sys.argv[2])
    cluster = SingleNodeCluster(folder)
    if what == "up":
        cluster.start()
        print(f"cluster up: {cluster.conf}, partition {PARTITION}")
    else:
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = cluster.dir / f"{name}.pid" if name != "munged" else Path("/run/munge/kdbench-test-munged.pid")
            if pid_file.exists():
                cluster.pids[name] = int(pid_file.read_text())
        cluster.stop()
