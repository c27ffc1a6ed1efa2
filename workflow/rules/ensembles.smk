# The paper's sections 4 and 6 (Tables 1 and 5) on spoken digits (two splits) and Fashion-MNIST: its jobs (a
# batched ensemble per seed, nets distilled from it at each candidate T, the 3% baselines on hard and soft targets)
# are in the job plan and train through `rule train` / `rule train_members` (`rule train_ensembles` when the
# section has seeds of its own); here are the data they read, the ensembles' cached logits and the section's tables
# and figures.
from kdbench import ensembles

ENS_DATASETS = ensembles.datasets(config)
FASHION_FILES = plan.dataset_files(DATA, "fashion_mnist")


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
        layout.log(RESULTS, "speech_features", "{split}"),
    shell:
        "exec kdbench data features --split {wildcards.split} --root {params.root} > {log} 2>&1"


rule ensemble_teacher_logits:
    """The ensemble's logits on the whole training split, cached once: every member (for the distilled nets, member
    group s teaches student s) or member 0 of each seed's ensemble (the 100%-data net teaching the 3% student)."""
    input:
        model=layout.model(RUNS, ensembles.job("{dataset}", "ensemble")),
        data=lambda w: plan.dataset_files(DATA, ensembles.data_of(config, w.dataset)),
    output:
        layout.ensemble_teacher(RUNS, "{dataset}", "{which}"),
    wildcard_constraints:
        dataset=one_of(ENS_DATASETS),
        which="ensemble|single",
    params:
        members=lambda w: "" if w.which == "ensemble" else
        "--members " + " ".join(str(i) for i in ensembles.single_teacher_members(config)),
    threads: config["threads"]
    resources:
        gpu=GPU,
    log:
        layout.log(RESULTS, "ensemble_teacher_logits", "{dataset}_{which}"),
    shell:
        "exec kdbench teacher-logits --model {input.model} --out {output} --root {DATA} --device {config[device]} "
        "{params.members} > {log} 2>&1"


def ensembles_metrics(dataset):
    return [layout.metrics(RUNS, ensembles.job(dataset, system), s)
            for system in ensembles.systems(config) for s in ensembles.system_seeds(config, system)]


rule aggregate_ensembles:
    """Tables 1 and 5 per dataset (mean ± std over seeds beside the paper's numbers), figures, provenance."""
    input:
        runs=[p for ds in ENS_DATASETS for p in ensembles_metrics(ds)],
        logits=[layout.logits(RUNS, ensembles.job(ds, s)) for ds in ENS_DATASETS for s in ensembles.systems(config)],
        data=[p for ds in ENS_DATASETS for p in plan.dataset_files(DATA, ensembles.data_of(config, ds))],
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
        "exec kdbench aggregate ensembles --config-json {params.cfg} --runs {RUNS} --paper {input.paper} "
        "--root {DATA} --out-dir {RESULTS}"
