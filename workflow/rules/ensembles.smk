# The paper's sections 4 and 6 (Tables 1 and 5) on spoken digits (two splits) and Fashion-MNIST: its jobs (a
# batched ensemble per seed, nets distilled from it at each candidate T, the 3% baselines on hard and soft targets)
# are in the job plan and train through `rule train` / `rule train_members` (`rule train_ensembles` when the
# section has seeds of its own); here are the data they read, the ensembles' cached logits and the section's tables
# and figures.
from kdbench.sections import ensembles



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
        **MACHINE,
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "ensemble_teacher_logits", "{dataset}_{which}"),
    shell:
        "exec python3 -m kdbench teacher-logits --model {input.model} --out {output} --root {resources.data_root} "
        "--device {resources.device} {params.members} > {log} 2>&1"


rule aggregate_ensembles:
    """Tables 1 and 5 per dataset (mean ± std over seeds beside the paper's numbers), figures, provenance. It reads
    each row's run logits, which the jobs that write its run records write too; a row whose logits are absent (a
    fresh clone that trained other rows) keeps its committed rows if they cite its runs as they are
    (kdbench.sections.ensembles.kept_rows), so the logits are not inputs of their own."""
    input:
        runs=[p for ds in ENS_DATASETS for p in ensembles_metrics(ds)],
        data=[p for ds in ENS_DATASETS for p in plan.dataset_files(DATA, ensembles.data_of(config, ds))],
        paper=PAPER,
    output:
        summary=RESULTS / "ensembles_summary.csv",
        provenance=RESULTS / "ensembles_provenance.csv",
        facts=RESULTS / ensembles.FACTS,
        md=report(RESULTS / "ensembles.md", caption="../report/ensembles.rst", category="Ensembles"),
        fig=report(RESULTS / "ensembles.png", caption="../report/ensembles.rst", category="Ensembles"),
    params:
        runs=RUNS,
        out=RESULTS,
        root=DATA,
        cfg=quoted_json(config_for("profile", "seeds", "ensembles")),
    localrule: True
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "aggregate_ensembles", "ensembles"),
    shell:
        "exec python3 -m kdbench aggregate ensembles --config-json {params.cfg} --runs {params.runs} --paper {input.paper} "
        "--root {params.root} --out-dir {params.out} --keep-committed > {log} 2>&1"
