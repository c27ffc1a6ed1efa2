# The paper's section 3 on MNIST: teacher, baseline, distilled student, width x temperature sweep, transfer sets
# without 3s and with only 7s and 8s plus their bias correction, then the section's tables and figures.
import re

STUDENTS = [s for s in mnist.systems(config) if s not in ("teacher", "baseline")]


def mnist_teacher(w):
    return [] if w.system in ("teacher", "baseline") else [RUNS / "teacher" / "train_logits.pt"]


rule train_mnist:
    """Train every seed of one system together; students read the teacher's cached logits."""
    input:
        data=MNIST_FILES,
        teacher=mnist_teacher,
    output:
        model=RUNS / "{system}" / "model.pt",
        logits=RUNS / "{system}" / "logits.pt",
        metrics=[RUNS / "{system}" / f"seed{s}" / "metrics.json" for s in SEEDS],
    wildcard_constraints:
        system="|".join(re.escape(s) for s in mnist.systems(config)),
    params:
        cfg=lambda w: quoted_json(mnist.train_config(config, w.system, first_or_none(mnist_teacher(w)))),
        seeds=" ".join(str(s) for s in SEEDS),
        out=lambda w: RUNS / w.system,
    threads: config["threads"]
    resources:
        gpu=GPU,
    log:
        RESULTS / "logs" / "train_mnist" / "{system}.log",
    benchmark:
        RESULTS / "benchmarks" / "train_mnist" / "{system}.tsv"
    shell:
        "exec kdbench train --config-json {params.cfg} --seeds {params.seeds} --out {params.out} "
        "--name mnist/{wildcards.system} --device {config[device]} --root {DATA} --threads {threads} > {log} 2>&1"


rule teacher_logits:
    """A teacher's logits on the whole un-jittered training split, computed once; every student reads them. The
    teacher is the section's teacher, or for born-again variants an experiment's `hard` run."""
    input:
        model=RUNS / "{teacher}" / "model.pt",
        data=MNIST_FILES,
    output:
        RUNS / "{teacher}" / "train_logits.pt",
    wildcard_constraints:
        teacher=r"teacher|variants/[A-Za-z0-9_.]+/hard",
    threads: config["threads"]
    resources:
        gpu=GPU,
    log:
        RESULTS / "logs" / "teacher_logits" / "{teacher}.log",
    shell:
        "exec kdbench teacher-logits --model {input.model} --out {output} --root {DATA} --device {config[device]} "
        "> {log} 2>&1"


rule bias_correction:
    """Shift the output bias of the omitted (or the only) classes by the amount that is best on validation."""
    input:
        RUNS / "{system}" / "logits.pt",
    output:
        RUNS / "{system}" / "bias.json",
    wildcard_constraints:
        system="omit3|only78",
    params:
        classes=lambda w: " ".join(str(c) for c in mnist.bias_settings(config, w.system)["classes"]),
        grid=lambda w: quoted_json(mnist.bias_settings(config, w.system)["grid"]),
        paper=lambda w: mnist.bias_settings(config, w.system)["paper_shift"],
    localrule: True
    shell:
        "exec kdbench bias --logits {input} --classes {params.classes} --grid-json {params.grid} "
        "--paper-shift {params.paper} --out {output}"


rule aggregate_mnist:
    """The section's rows of summary.csv, their provenance, the paper-vs-ours Markdown table and the figures."""
    input:
        metrics=[m for s in mnist.systems(config) for m in run_outputs(s)["metrics"]],
        bias=[RUNS / "omit3" / "bias.json", RUNS / "only78" / "bias.json"],
        paper=PAPER,
    output:
        summary=RESULTS / "mnist_summary.csv",
        provenance=RESULTS / "mnist_provenance.csv",
        table=report(RESULTS / "mnist.md", caption="../report/mnist_table.rst", category="MNIST (section 3)"),
        sweep=report(RESULTS / "mnist_sweep.png", caption="../report/mnist_sweep.rst", category="MNIST (section 3)"),
        transfer=report(RESULTS / "mnist_transfer.png", caption="../report/mnist_transfer.rst",
                        category="MNIST (section 3)"),
    params:
        cfg=quoted_json(config_for("profile", "seeds", "mnist")),
    localrule: True
    shell:
        "exec kdbench aggregate mnist --config-json {params.cfg} --runs {RUNS} --paper {input.paper} --out-dir {RESULTS}"
