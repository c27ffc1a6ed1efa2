# The paper's section 3 on MNIST: its jobs (teacher, baseline, distilled student, width x temperature sweep,
# transfer sets without 3s and with only 7s and 8s) are in the job plan and train through `rule train`; here are
# the bias correction of the transfer-set students and the section's tables and figures.
from kdbench.sections import mnist


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
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "bias_correction", "{system}"),
    shell:
        "exec python3 -m kdbench bias --logits {input} --classes {params.classes} --grid-json {params.grid} "
        "--paper-shift {params.paper} --out {output} > {log} 2>&1"


rule aggregate_mnist:
    """The section's rows of summary.csv, their provenance, the paper-vs-ours Markdown table and the figures."""
    input:
        metrics=[layout.metrics(RUNS, s, seed) for s in mnist.systems(config) for seed in SEEDS],
        bias=[layout.bias(RUNS, "omit3"), layout.bias(RUNS, "only78")],
        paper=PAPER,
    output:
        summary=RESULTS / "mnist_summary.csv",
        provenance=RESULTS / "mnist_provenance.csv",
        table=report(RESULTS / "mnist.md", caption="../report/mnist_table.rst", category="MNIST (section 3)"),
        sweep=report(RESULTS / "mnist_sweep.png", caption="../report/mnist_sweep.rst", category="MNIST (section 3)"),
        transfer=report(RESULTS / "mnist_transfer.png", caption="../report/mnist_transfer.rst",
                        category="MNIST (section 3)"),
    params:
        runs=RUNS,
        out=RESULTS,
        cfg=quoted_json(config_for("profile", "seeds", "mnist")),
    localrule: True
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "aggregate_mnist", "mnist"),
    shell:
        "exec python3 -m kdbench aggregate mnist --config-json {params.cfg} --runs {params.runs} --paper {input.paper} "
        "--out-dir {params.out} > {log} 2>&1"
