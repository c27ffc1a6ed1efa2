# KD variants side by side: every distillation experiment (kdbench.sections.variants.experiments: the MNIST students, the
# ensembles' students of Table 1, the 3% soft-target nets of Table 5) once per variant in config["variants"]. The
# variants' students are jobs of the plan and train through `rule train`; here are the temperature choices they
# wait for and the variants' tables.
from kdbench.sections import variants

EXPERIMENTS = variants.experiments(config)
CHOICES = {e.name: variants.choice_config(config, e) for e in EXPERIMENTS if e.choice is not None}


rule choose_temperature:
    """The temperature with the fewest validation errors for an experiment's students."""
    input:
        lambda w: variants.choice_inputs(CHOICES[w.experiment], RUNS),
    output:
        layout.chosen_temperature(RESULTS, "{experiment}"),
    wildcard_constraints:
        experiment=one_of(CHOICES),
    params:
        runs=RUNS,
        cfg=lambda w: quoted_json(CHOICES[w.experiment]),
    localrule: True
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "choose_temperature", "{experiment}"),
    shell:
        "exec python3 -m kdbench choose-temperature --config-json {params.cfg} --runs {params.runs} --out {output} > {log} 2>&1"


# one target per variant: `snakemake variant_<name>` trains that variant's students in every experiment and only what
# they need (teachers, ensembles, the temperature choices), not the tables; before it starts (or at the end of a dry
# run) it lists those jobs with their time (kdbench.estimate.announce)
for _v in [v for v in config["variants"] if v != "hinton"]:

    rule:
        name:
            f"variant_{_v}"
        input:
            [layout.metrics(RUNS, n, s) for n, j in PLAN.items() if n.startswith("variants/") and n.split("/")[2] == _v
             for s in j.seeds],
        localrule: True


VARIANT_TABLES = variants.table_config(config)
VARIANT_TABLES_MNIST = variants.table_config(config, tables=("mnist",), name="variants_mnist")


rule aggregate_variants:
    """variants.csv / variants.md: rows are variants, columns experiments, paired differences to hinton."""
    input:
        variant_table_inputs(VARIANT_TABLES),
    output:
        csv=RESULTS / "variants.csv",
        table=report(RESULTS / "variants.md", caption="../report/variants.rst", category="KD variants"),
        figure=report(RESULTS / "variants.png", caption="../report/variants.rst", category="KD variants"),
        leaderboard=report(RESULTS / "variants_leaderboard.png", caption="../report/variants_leaderboard.rst",
                           category="KD variants"),
    params:
        runs=RUNS,
        out=RESULTS,
        cfg=quoted_json(VARIANT_TABLES),
    localrule: True
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "aggregate_variants", "variants"),
    shell:
        "exec python3 -m kdbench aggregate variants --config-json {params.cfg} --runs {params.runs} --out-dir {params.out} > {log} 2>&1"


rule aggregate_variants_mnist:
    """variants_mnist.*: the variants' table of the MNIST students alone (what `mnist_section` builds)."""
    input:
        variant_table_inputs(VARIANT_TABLES_MNIST),
    output:
        csv=RESULTS / "variants_mnist.csv",
        table=RESULTS / "variants_mnist.md",
        figure=RESULTS / "variants_mnist.png",
        leaderboard=RESULTS / "variants_mnist_leaderboard.png",
    params:
        runs=RUNS,
        out=RESULTS,
        cfg=quoted_json(VARIANT_TABLES_MNIST),
    localrule: True
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "aggregate_variants_mnist", "variants_mnist"),
    shell:
        "exec python3 -m kdbench aggregate variants --config-json {params.cfg} --runs {params.runs} --out-dir {params.out} > {log} 2>&1"
