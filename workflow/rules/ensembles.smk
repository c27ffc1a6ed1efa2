# The paper's sections 4 and 6 (Tables 1 and 5) on spoken digits (two splits) and Fashion-MNIST: a batched
# ensemble per seed, nets distilled from it at each candidate T, the 3% baselines on hard and soft targets, then
# the section's tables and figures.
import re

from kdbench import ensembles

ENS = RUNS / "ensembles"
ENS_DATASETS = ensembles.datasets(config)
FASHION_FILES = [DATA / "FashionMNIST" / "raw" / f for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]


def dataset_inputs(dataset):
    """The verified files (images) or the feature cache (speech) a job on `dataset` reads."""
    if dataset in ensembles.SPEECH:
        return [DATA / "FSDD" / "features" / f"{dataset}.pt"]
    return {"mnist": MNIST_FILES, "fashion_mnist": FASHION_FILES}[dataset]


def ensemble_teacher(w):
    name = ensembles.teacher_file(w.system)
    return [] if name is None else [ENS / w.dataset / name]


rule fetch_fashion_mnist:
    """Verified Fashion-MNIST files: local copy, $KDBENCH_MIRROR, else torchvision's download."""
    output:
        FASHION_FILES,
    params:
        root=DATA,
    localrule: True
    shell:
        "exec kdbench data fetch --dataset fashion_mnist --root {params.root}"


rule speech_features:
    """Verified FSDD recordings -> log-mel frames and state targets of one split, computed once."""
    output:
        DATA / "FSDD" / "features" / "{split}.pt",
    wildcard_constraints:
        split="speech|speech_unseen",
    params:
        root=DATA,
    log:
        RESULTS / "logs" / "speech_features" / "{split}.log",
    shell:
        "exec kdbench data features --split {wildcards.split} --root {params.root} > {log} 2>&1"


rule train_ensemble:
    """All seeds x members of one dataset's ensemble as one batched model; each member is a baseline net."""
    input:
        data=lambda w: dataset_inputs(w.dataset),
    output:
        model=ENS / "{dataset}" / "ensemble" / "model.pt",
        logits=ENS / "{dataset}" / "ensemble" / "logits.pt",
        metrics=[ENS / "{dataset}" / "ensemble" / f"seed{s}" / "metrics.json" for s in ensembles.ensemble_seeds(config)],
    wildcard_constraints:
        dataset="|".join(ENS_DATASETS),
    params:
        cfg=lambda w: quoted_json(ensembles.train_config(config, w.dataset, "ensemble", None)),
        seeds=" ".join(str(s) for s in ensembles.ensemble_seeds(config)),
        out=lambda w: ENS / w.dataset / "ensemble",
    threads: config["threads"]
    resources:
        gpu=GPU,
    log:
        RESULTS / "logs" / "train_ensembles" / "{dataset}" / "ensemble.log",
    benchmark:
        RESULTS / "benchmarks" / "train_ensembles" / "{dataset}" / "ensemble.tsv"
    shell:
        "exec kdbench train --config-json {params.cfg} --seeds {params.seeds} --out {params.out} "
        "--name ensembles/{wildcards.dataset}/ensemble --device {config[device]} --root {DATA} "
        "--threads {threads} > {log} 2>&1"


rule train_ensemble_student:
    """Every seed of one student system of one dataset together: distilled nets, or the 3% baselines."""
    input:
        data=lambda w: dataset_inputs(w.dataset),
        teacher=ensemble_teacher,
    output:
        model=ENS / "{dataset}" / "{system}" / "model.pt",
        logits=ENS / "{dataset}" / "{system}" / "logits.pt",
        metrics=[ENS / "{dataset}" / "{system}" / f"seed{s}" / "metrics.json" for s in SEEDS],
    wildcard_constraints:
        dataset="|".join(ENS_DATASETS),
        system="|".join(re.escape(s) for s in ensembles.systems(config) if s != "ensemble"),
    params:
        cfg=lambda w: quoted_json(ensembles.train_config(config, w.dataset, w.system,
                                                        first_or_none(ensemble_teacher(w)))),
        seeds=" ".join(str(s) for s in SEEDS),
        out=lambda w: ENS / w.dataset / w.system,
    threads: config["threads"]
    resources:
        gpu=GPU,
    log:
        RESULTS / "logs" / "train_ensembles" / "{dataset}" / "{system}.log",
    benchmark:
        RESULTS / "benchmarks" / "train_ensembles" / "{dataset}" / "{system}.tsv"
    shell:
        "exec kdbench train --config-json {params.cfg} --seeds {params.seeds} --out {params.out} "
        "--name ensembles/{wildcards.dataset}/{wildcards.system} --device {config[device]} --root {DATA} "
        "--threads {threads} > {log} 2>&1"


rule ensemble_teacher_logits:
    """The ensemble's logits on the whole training split, cached once: every member (for the distilled nets, member
    group s teaches student s) or member 0 of each seed's ensemble (the 100%-data net teaching the 3% student)."""
    input:
        model=ENS / "{dataset}" / "ensemble" / "model.pt",
        data=lambda w: dataset_inputs(w.dataset),
    output:
        ENS / "{dataset}" / "teacher_{which}.pt",
    wildcard_constraints:
        which="ensemble|single",
    params:
        members=lambda w: "" if w.which == "ensemble" else
        "--members " + " ".join(str(i) for i in ensembles.single_teacher_members(config)),
    threads: config["threads"]
    resources:
        gpu=GPU,
    log:
        RESULTS / "logs" / "ensemble_teacher_logits" / "{dataset}_{which}.log",
    shell:
        "exec kdbench teacher-logits --model {input.model} --out {output} --root {DATA} --device {config[device]} "
        "{params.members} > {log} 2>&1"


def ensembles_metrics(dataset):
    return [ENS / dataset / system / f"seed{s}" / "metrics.json"
            for system in ensembles.systems(config) for s in ensembles.system_seeds(config, system)]


rule aggregate_ensembles:
    """Tables 1 and 5 per dataset (mean ± std over seeds beside the paper's numbers), figures, provenance."""
    input:
        runs=[p for ds in ENS_DATASETS for p in ensembles_metrics(ds)],
        logits=[ENS / ds / s / "logits.pt" for ds in ENS_DATASETS for s in ensembles.systems(config)],
        data=[p for ds in ENS_DATASETS for p in dataset_inputs(ds)],
        paper=PAPER,
    output:
        summary=RESULTS / "ensembles_summary.csv",
        provenance=RESULTS / "ensembles_provenance.csv",
        md=report(RESULTS / "ensembles.md", caption="../report/ensembles.rst", category="Ensembles"),
        fig=report(RESULTS / "ensembles.png", caption="../report/ensembles.rst", category="Ensembles"),
    params:
        cfg=quoted_json(config_for("profile", "seeds", "ensembles")),
    localrule: True
    shell:
        "exec kdbench aggregate ensembles --config-json {params.cfg} --runs {ENS} --paper {input.paper} "
        "--root {DATA} --out-dir {RESULTS}"
