"""Running the workflow from tests: one snakemake call in a working directory, with the smoke profile by default."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / ".test" / "config.yaml"


def snakemake(workdir: Path, *extra: str, data_root: Path, configfile: Path = SMOKE, cores: bool = True
              ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(configfile), "--config", f"data_root={data_root}", *(["--cores", "2"] if cores else []),
           *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
