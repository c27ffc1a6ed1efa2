"""Lint is part of the test command: ruff (configured in pyproject.toml) finds nothing in the package, tests and
benchmarks, and `snakemake --lint` finds nothing in the workflow of any committed profile."""
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from workflow_helpers import REPO, SMOKE


def test_ruff_finds_nothing():
    if shutil.which("ruff") is None:
        pytest.fail("ruff is not installed: `pip install -e '.[test]'` installs it")
    r = subprocess.run(["ruff", "check", "--no-cache", "kdbench", "tests", "benchmarks"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def lint_findings(text: str) -> list[tuple[str, str]]:
    """(rule or snakefile, finding) for each finding of `snakemake --lint`'s text output."""
    out, where = [], None
    for line in text.splitlines():
        head = re.match(r"Lints for (?:rule (\w+) \(line \d+, .+\)|snakefile (.+)):$", line)
        if head:
            where = head.group(1) or head.group(2)
        elif where and (item := re.match(r"    \* (.+?):?$", line)):
            out.append((where, item.group(1)))
    return out


def test_lint_findings_are_read_from_snakemakes_text():
    text = ("Lints for rule train (line 7, /w/train.smk):\n    * Specify a conda environment or container for each "
            "rule.:\n      This way...\nLints for snakefile /w/common.smk:\n    * Mixed rules and functions in same "
            "snakefile.:\n      Small one-liner...\n")
    assert lint_findings(text) == [("train", "Specify a conda environment or container for each rule."),
                                   ("/w/common.smk", "Mixed rules and functions in same snakefile.")]


@pytest.mark.parametrize("profile", [SMOKE, REPO / "config" / "quick.yaml", REPO / "config" / "config.yaml"],
                         ids=["smoke", "quick", "paper"])
def test_snakemake_lint_finds_nothing(profile):
    r = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--configfile", str(profile)], cwd=REPO,
                       capture_output=True, text=True)
    text = r.stdout + r.stderr
    findings = lint_findings(text)
    assert r.returncode == 0 and not findings, "\n".join(f"{where}: {what}" for where, what in findings) or text[-3000:]
    assert "your workflow is in a good condition" in text, text[-3000:]


def test_every_job_runs_in_the_rules_environment_and_gets_the_machine_as_resources():
    """Every rule names its software, workflow/envs/kdbench.yaml (the runtime dependencies pyproject.toml states, for
    `--use-conda`), and calls the checkout's package as `python3 -m kdbench`, which that environment can run without
    a `kdbench` script; the device and data root reach the jobs that run a net as resources, not params (which would
    rerun every finished job when a profile moves to a GPU)."""
    import tomllib

    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    env_file = REPO / "workflow" / "envs" / "kdbench.yaml"
    pip = next(d["pip"] for d in yaml.safe_load(env_file.read_text())["dependencies"] if isinstance(d, dict))
    assert pip == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    with SnakemakeApi() as api:
        wf = api.workflow(snakefile=REPO / "Snakefile", workdir=REPO, resource_settings=ResourceSettings(cores=1),
                          config_settings=ConfigSettings(configfiles=[SMOKE]))
        rules = list(wf._workflow.rules)
    shell_rules = [r for r in rules if r.shellcmd]
    assert shell_rules and all(r.conda_env == str(env_file) for r in shell_rules), \
        [(r.name, r.conda_env) for r in shell_rules if r.conda_env != str(env_file)]
    assert all(r.shellcmd.startswith("exec python3 -m kdbench ") for r in shell_rules), \
        [r.shellcmd[:40] for r in shell_rules]
    net_rules = [r for r in shell_rules if "--device" in r.shellcmd]
    assert {r.name for r in net_rules} >= {"train", "teacher_logits", "ensemble_teacher_logits"}, net_rules
    for r in net_rules:
        assert "{resources.device}" in r.shellcmd and "{resources.data_root}" in r.shellcmd, (r.name, r.shellcmd)
        assert not any("device" in str(p) for p in r.params.keys()), r.name
