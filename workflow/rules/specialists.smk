# The paper's section 5 (Tables 3 and 4): confusable clusters from the generalist's predictions (a checkpoint: how
# many specialists there are is known only once it has run), one independent training job per specialist, then
# the KL combination on the test set and the section's tables and figure.
from kdbench.sections import specialists

SPEC_JOB = specialists.job("{dataset}", "{i}")  # specialists/{dataset}/spec{i}
# what these rules see of the config: the generalists' recipe (ensembles) and their own block
SPEC_CONFIG = config_for("profile", "seeds", "ensembles", "specialists")


checkpoint specialist_clusters:
    """k-means on the columns of the covariance of the generalists' validation predictions (no labels used)."""
    input:
        layout.logits(RUNS, specialists.generalist_job("{dataset}")),
    output:
        layout.clusters(RUNS, "{dataset}"),
    wildcard_constraints:
        dataset=one_of(SPEC_DATASETS),
    params:
        cfg=lambda w: quoted_json(specialists.cluster_config(config, w.dataset)),
    localrule: True
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "specialist_clusters", "{dataset}"),
    shell:
        "exec python3 -m kdbench clusters --config-json {params.cfg} --dataset {wildcards.dataset} --generalist-logits {input} "
        "--out {output} > {log} 2>&1"


rule train_specialist:
    """One specialist (every seed together, seed s starting from generalist s): its cluster plus a dustbin class,
    half of each epoch from its cluster; with `soft_targets`, also learning from generalist s's cached logits."""
    input:
        clusters=layout.clusters(RUNS, "{dataset}"),
        generalist=layout.model(RUNS, specialists.generalist_job("{dataset}")),
        soft_targets=lambda w: [p for p in [specialists.teacher_logits(config, w.dataset)] if p],
        data=lambda w: plan.dataset_files(DATA, ensembles.data_of(config, w.dataset)),
    output:
        model=layout.model(RUNS, SPEC_JOB),
        logits=layout.logits(RUNS, SPEC_JOB),
        metrics=[layout.metrics(RUNS, SPEC_JOB, s) for s in SPEC_SEEDS],
    wildcard_constraints:
        dataset=one_of(SPEC_DATASETS),
        i=r"\d+",
    params:
        # the cluster's classes are read from clusters.json by the job itself: params that are plain functions of
        # the config keep snakemake's rerun-on-params-change working for jobs that follow a checkpoint
        cfg=lambda w: quoted_json(specialists.base_config(config, w.dataset)),
        seeds=" ".join(str(s) for s in SPEC_SEEDS),
        out=lambda w: layout.run(RUNS, specialists.job(w.dataset, w.i)),
    threads: config["threads"]
    resources:
        **MACHINE,
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "train", SPEC_JOB),
    benchmark:
        layout.benchmark(RESULTS, "train", SPEC_JOB)
    shell:
        "exec python3 -m kdbench train --config-json {params.cfg} --cluster-file {input.clusters} --cluster-index {wildcards.i} "
        "--seeds {params.seeds} --out {params.out} --name specialists/{wildcards.dataset}/spec{wildcards.i} "
        "--device {resources.device} --root {resources.data_root} --threads {threads} > {log} 2>&1"


rule aggregate_specialists:
    """Tables 3 and 4 per dataset: the generalist alone and combined with its specialists (eq. 5)."""
    input:
        runs=all_specialists,
        clusters=[layout.clusters(RUNS, ds) for ds in SPEC_DATASETS],
        generalists=[layout.logits(RUNS, specialists.generalist_job(ds)) for ds in SPEC_DATASETS],
        paper=PAPER,
    output:
        summary=RESULTS / "specialists_summary.csv",
        provenance=RESULTS / "specialists_provenance.csv",
        md=report(RESULTS / "specialists.md", caption="../report/specialists.rst", category="Specialists"),
        fig=report(RESULTS / "specialists.png", caption="../report/specialists.rst", category="Specialists"),
    params:
        runs=RUNS,
        out=RESULTS,
        cfg=quoted_json(SPEC_CONFIG),
        clusters=" ".join(f"{ds}={layout.clusters(RUNS, ds)}" for ds in SPEC_DATASETS),
    localrule: True
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "aggregate_specialists", "specialists"),
    shell:
        "exec python3 -m kdbench aggregate specialists --config-json {params.cfg} --runs {params.runs} --paper {input.paper} "
        "--clusters {params.clusters} --out-dir {params.out} > {log} 2>&1"
