# Shared definitions, and no rules (snakemake --lint): paths (kdbench.layout), the job plan (kdbench.plan, checked
# before any job runs), the seed lists the training rules serve, and the input functions of the sections' rules.
import atexit
import contextlib
import json
import os
import re
import shlex
import sys
from pathlib import Path

from kdbench import layout, plan, sections
from kdbench.data import registry as data_registry
from kdbench.sections import ensembles, specialists
from kdbench import profile as kdprofile

RESULTS = layout.results(config["profile"])
RUNS = layout.runs(config["profile"])
DATA = Path(config["data_root"])
SEEDS = config["seeds"]
# a relative path from the working directory, so that moving a checkout (with its results) reruns nothing
PAPER = Path(config["paper_numbers"])
PAPER = Path(os.path.relpath(PAPER if PAPER.is_absolute() else Path(workflow.basedir) / PAPER))
# the working directory (`-d`): snakemake leaves it before the atexit hook below runs, whose paths are relative
WORKDIR = Path.cwd()
# The machine a job runs on: the resources of every rule that runs a net (`**MACHINE`), never params (snakemake reruns
# a finished job when its params change). Such a job asks the scheduler for one GPU when the config trains on CUDA
# (SLURM: --gpus), and reads its device and this machine's data root from its resources, so a finished profile moved
# to a GPU retrains nothing. (Data moved to another disk does rerun: the data files are the jobs' inputs.)
MACHINE = {"gpu": 1 if config["device"].startswith("cuda") else 0, "device": config["device"], "data_root": str(DATA)}
# The software each job runs (every rule's `conda:`): kdbench's runtime dependencies, one environment file that
# `snakemake --use-conda` builds once for all rules; the package is this checkout's (`python3 -m kdbench` with the
# PYTHONPATH the Snakefile sets).
SOFTWARE = str(Path(workflow.basedir) / "workflow" / "envs" / "kdbench.yaml")


def user_file(source):
    """The user file that registered a dataset or section, as a rule's input list (none for a built-in)."""
    return [source] if source else []


def extensions_arg(files):
    """The `--extensions FILE` argument of a kdbench command that must import `files` (empty for none)."""
    return " ".join(["--extensions", *files]) if files else ""


def config_for(*keys):
    """The part of the config a rule's params carry: only the keys its code reads, so that adding or changing another
    section does not change its params (which would rerun finished jobs)."""
    return {k: config[k] for k in keys if k in config}


# Training params are functions of the wildcards only, never of `input`: snakemake records (and reruns a job on a
# change of) only such params; one that reads `input` is left out of its metadata, and a changed recipe would
# silently keep the old run. The job plan gives each job's whole config from its name.
def quoted_json(obj):
    return shlex.quote(json.dumps(obj, sort_keys=True))


def one_of(names):
    """A wildcard constraint that matches exactly these names."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"


PLAN = kdprofile.planned_jobs(config)
SUMMARY_PARTS = [name for name in sections.names() if sections.get(name).SUMMARY]
# the sections with a rule file of their own (workflow/rules/<name>.smk); sections.smk makes the others' rule
RULE_FILE_SECTIONS = [n for n in sections.names()
                      if (Path(workflow.basedir) / "workflow" / "rules" / f"{n}.smk").exists()]
TEACHERS = plan.teachers(config, PLAN)


def job_inputs(w):
    job = PLAN[w.job]
    return {"data": plan.dataset_files(DATA, job.dataset), "needs": job.inputs()}


# one training rule (train.smk) per seed list of the plan, by name (kdbench.plan.train_rules)
TRAIN_RULES = plan.train_rules(config, PLAN)
SPEC_SEEDS = specialists.seeds(config)


# what the sections' rules share (snakemake --lint: functions live here, rules in the rule files)
ENS_DATASETS = ensembles.datasets(config)
SPEC_DATASETS = specialists.datasets(config)


def ensembles_metrics(dataset):
    return [layout.metrics(RUNS, ensembles.job(dataset, system), s)
            for system in ensembles.systems(config) for s in ensembles.system_seeds(config, system)]


def specialist_classes(path):
    return json.loads(Path(path).read_text())["clusters"]


def all_specialists(w):
    """Every specialist's run, once each dataset's clusters are known."""
    out = []
    for ds in SPEC_DATASETS:
        n = len(specialist_classes(checkpoints.specialist_clusters.get(dataset=ds).output[0]))
        out += [layout.metrics(RUNS, specialists.job(ds, i), s) for i in range(n) for s in SPEC_SEEDS]
        out += [layout.logits(RUNS, specialists.job(ds, i)) for i in range(n)]
    return out


def variant_table_inputs(spec):
    """Every run record the table reads: each experiment's jobs (and every setting of a tuned variant, among which
    the table chooses on validation) on that experiment's own seeds."""
    return [layout.metrics(RUNS, job, s) for e in spec["experiments"]
            for job in [*e["jobs"].values(), *(j for t in e.get("tuned", {}).values() for j in t["settings"].values())]
            for s in e["seeds"]]


def needed():
    """The jobs of the DAG that need to run, finished or not (a dry run marks every one finished as it prints it)."""
    return workflow.dag.needrun_jobs(exclude_finished=False)


def announce_training(dry=False):
    """How long the training about to run should take here, from the epochs measured here (kdbench.estimate): the
    planned training jobs of the DAG snakemake is about to run (what `kdbench plan` counts for `rule all`)."""
    from kdbench import estimate

    todo = {j.wildcards.get("job") for j in needed() if j.rule.name.startswith("train")}
    note = estimate.announce(config, [PLAN[n] for n in sorted(todo) if n in PLAN])
    if note:
        print(f"kdbench: dry run: {note.removeprefix('kdbench: ')}" if dry else note, file=sys.stderr)


def announce_after_a_dry_run():
    """A dry run runs no onstart: the same message once its DAG is known, as the process ends (back in the working
    directory, which snakemake has left by then); and which datasets it would fetch first, from where (a fix where
    the mirror lacks one)."""
    try:
        if workflow.dryrun and not workflow.remote_exec:
            with contextlib.chdir(WORKDIR):
                announce_training(dry=True)
                fetch = sorted({j.rule.name.removeprefix("fetch_") for j in needed() if j.rule.name.startswith("fetch_")})
                note = data_registry.fetch_note(fetch, DATA, os.environ.get("KDBENCH_MIRROR"))
                if note:
                    print(note, file=sys.stderr)
    except Exception:  # the DAG was never built (an error before it): snakemake has said why
        pass


atexit.register(announce_after_a_dry_run)
