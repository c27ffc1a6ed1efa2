# The one training rule every planned job goes through (kdbench.plan), made once per seed list of the plan, and the
# teacher-logits cache.


for _name, _seeds in TRAIN_RULES.items():

    rule:
        """Train every seed of one planned job together (a section's system, an ensemble, a variant's student); its
        config, teacher files and chosen temperature come from the job plan (kdbench.plan). One rule per seed list of
        the plan (common.smk, TRAIN_RULES): `train` for the profile's seeds."""
        name:
            _name
        input:
            unpack(job_inputs),
        output:
            model=RUNS / "{job}" / "model.pt",
            logits=RUNS / "{job}" / "logits.pt",
            metrics=[RUNS / "{job}" / f"seed{s}" / "metrics.json" for s in _seeds],
        wildcard_constraints:
            job=one_of(n for n, j in PLAN.items() if list(j.seeds) == _seeds),
        params:
            cfg=lambda w: quoted_json(PLAN[w.job].config),
            temperature=lambda w: (f"--temperature-from {PLAN[w.job].temperature_from}"
                                   if PLAN[w.job].temperature_from else ""),
            seeds=lambda w: " ".join(str(s) for s in PLAN[w.job].seeds),
            out=lambda w: RUNS / w.job,
        threads: config["threads"]
        resources:
            **MACHINE,
        conda:
            SOFTWARE
        log:
            layout.log(RESULTS, plan.TRAIN_RULE, "{job}"),
        benchmark:
            layout.benchmark(RESULTS, plan.TRAIN_RULE, "{job}")
        shell:
            "exec python3 -m kdbench train --config-json {params.cfg} {params.temperature} --seeds {params.seeds} "
            "--out {params.out} --name {wildcards.job} --device {resources.device} --root {resources.data_root} "
            "--threads {threads} > {log} 2>&1"


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
        **MACHINE,
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "teacher_logits", "{teacher}"),
    shell:
        "exec python3 -m kdbench teacher-logits --model {input.model} --out {output} --root {resources.data_root} "
        "--device {resources.device} > {log} 2>&1"
