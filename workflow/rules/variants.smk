# KD variants side by side: every distillation experiment once per variant in config["variants"], reusing the
# experiment's cached teacher logits (born-again variants learn from the experiment's own `hard` run).
from kdbench import variants

VARIANT_EXPERIMENTS = variants.experiments(config)
# what the temperature choice reads: a new variant or a table setting must not rerun it (nor every best-T run after it)
CHOICE_CONFIG = {"seeds": SEEDS, "mnist": {"sweep": {"temperatures": config["mnist"]["sweep"]["temperatures"]}}}


def variant_teacher(w):
    v = losses.get(w.variant)
    if not v.needs_teacher:
        return []
    if v.teacher == "self":
        return [variants.run_dir(RUNS, w.experiment, "hard") / "train_logits.pt"]
    return [RUNS / "teacher" / "train_logits.pt"]


def variant_temperature(w):
    if not variants.needs_chosen_temperature(w.experiment):
        return []
    return [RESULTS / "variants" / f"{w.experiment}_temperature.json"]


rule choose_temperature:
    """The sweep's temperature with the fewest validation errors for the experiment's width."""
    input:
        lambda w: [m for t in config["mnist"]["sweep"]["temperatures"]
                   for m in run_outputs(mnist.sweep_name(int(w.width), t))["metrics"]],
    output:
        RESULTS / "variants" / "mnist_w{width}_bestT_temperature.json",
    params:
        cfg=quoted_json(CHOICE_CONFIG),
    localrule: True
    shell:
        "exec kdbench choose-temperature --config-json {params.cfg} --runs {RUNS} --width {wildcards.width} --out {output}"


rule train_variant:
    """Train every seed of one KD variant in one experiment together."""
    input:
        data=MNIST_FILES,
        teacher=variant_teacher,
        temperature=variant_temperature,
        modules=config.get("variant_modules", []),
    output:
        model=RUNS / "variants" / "{experiment}" / "{variant}" / "model.pt",
        logits=RUNS / "variants" / "{experiment}" / "{variant}" / "logits.pt",
        metrics=[RUNS / "variants" / "{experiment}" / "{variant}" / f"seed{s}" / "metrics.json" for s in SEEDS],
    wildcard_constraints:
        experiment="|".join(re.escape(e) for e in VARIANT_EXPERIMENTS),
        variant="[A-Za-z0-9_]+",
    params:
        cfg=lambda w: quoted_json(variants.train_config(config, w.experiment, w.variant,
                                                       first_or_none(variant_teacher(w)))),
        temperature=lambda w: " ".join(f"--temperature-from {p}" for p in variant_temperature(w)),
        seeds=" ".join(str(s) for s in SEEDS),
        out=lambda w: RUNS / "variants" / w.experiment / w.variant,
    threads: config["threads"]
    resources:
        gpu=GPU,
    log:
        RESULTS / "logs" / "train_variant" / "{experiment}" / "{variant}.log",
    benchmark:
        RESULTS / "benchmarks" / "train_variant" / "{experiment}" / "{variant}.tsv"
    shell:
        "exec kdbench train --config-json {params.cfg} {params.temperature} --seeds {params.seeds} --out {params.out} "
        "--name variants/{wildcards.experiment}/{wildcards.variant} --device {config[device]} --root {DATA} "
        "--threads {threads} > {log} 2>&1"


rule aggregate_variants:
    """variants.csv / variants.md: rows are variants, columns experiments, paired differences to hinton."""
    input:
        [m for e in VARIANT_EXPERIMENTS for v in set(config["variants"]) | {"hinton"}
         for m in [variants.run_dir(RUNS, e, v) / f"seed{s}" / "metrics.json" for s in SEEDS]],
    output:
        csv=RESULTS / "variants.csv",
        table=report(RESULTS / "variants.md", caption="../report/variants.rst", category="KD variants"),
        figure=report(RESULTS / "variants.png", caption="../report/variants.rst", category="KD variants"),
    params:
        cfg=quoted_json(config_for("profile", "seeds", "variants", "variant_experiments")),
    localrule: True
    shell:
        "exec kdbench aggregate variants --config-json {params.cfg} --runs {RUNS} --out-dir {RESULTS}"
