"""What each `kdbench` command does, one function per command, called by `kdbench.cli` after it has parsed the
arguments (`kdbench --help` and a usage error load none of this: torch, pandas and the sections take seconds).

Each function is a thin wrapper around one library function: it reads the arguments, calls the library, prints one
line of what it made, and turns a known error into one line and an exit status."""
from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from kdbench import check, estimate, layout, plan, profile, registry, sections
from kdbench.data import datasets as data
from kdbench.data import registry as data_registry
from kdbench.data import speech
from kdbench.engine import train as engine_train
from kdbench.engine.config import ConfigError
from kdbench.records import atomic_write_json
from kdbench.report import aggregate
from kdbench.report import compare as report_compare
from kdbench.sections import bias, specialists, variants
from kdbench.spec import TrainSpec


def cmd_fetch(args) -> int:
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


def cmd_features(args) -> int:
    try:
        path = speech.build_features(args.root or data.default_root(), args.split, args.out)
    except speech.SpeechDataError as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 1
    print(speech.describe(torch.load(path, map_location="cpu", weights_only=False)), "->", path)
    return 0


def cmd_train(args) -> int:
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
        spec = TrainSpec.from_config(plan.bound_config(cfg, f"training config {args.config or '--config-json'}",
                                                       args.temperature_from, cluster))  # resolved once, here
        if args.threads:
            torch.set_num_threads(args.threads)
        records = engine_train.train(spec, args.seeds, args.out, device=args.device, root=args.root,
                                     name=args.name, progress=not args.no_progress)
    except (data.DataError, speech.SpeechDataError, engine_train.NonFiniteLossError, engine_train.DivergedError,
            ValueError, OSError, KeyError) as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 1
    for r in records:
        print(f"{r['name']} seed {r['seed']}: {r['test_errors']} test errors "
              f"({100 * r['test_accuracy']:.2f}% accuracy), {r['wall_seconds']:.1f} s")
    return 0


def _device_error(device: str) -> str | None:
    """Why `device` cannot train here, or None: an unknown name, or CUDA on a machine without a usable GPU."""
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


def cmd_teacher_logits(args) -> int:
    logits = engine_train.teacher_logits(args.model, args.out, root=args.root, device=args.device, members=args.members)
    print(f"teacher logits {tuple(logits.shape)} -> {args.out}")
    return 0


def cmd_bias(args) -> int:
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
    return sections.get(name)


def cmd_aggregate(args) -> int:
    registry.load_files(args.extensions, "--extensions")
    section = section_module(args.section)
    paper = aggregate.load_paper(args.paper) if args.paper else {}
    clusters = dict(item.split("=", 1) for item in args.clusters) if args.clusters else None
    print(section.write(json.loads(args.config_json), Path(args.runs), Path(args.out_dir), paper=paper,
                        root=args.root, clusters=clusters, **({"keep_committed": True} if args.keep_committed else {})))
    return 0


def cmd_choose_temperature(args) -> int:
    choice = variants.choose_temperature(json.loads(args.config_json), Path(args.runs))
    atomic_write_json(args.out, choice)
    print(f"{choice['experiment']}: T={choice['temperature']:g} has the fewest validation errors")
    return 0


def cmd_plan(args) -> int:
    try:
        cfg = profile.load(args.configfile)
        jobs = profile.check(cfg)
    except (profile.ProfileError, ConfigError, ValueError) as e:
        print(f"kdbench: error: {args.configfile}: {e}", file=sys.stderr)
        return 1
    every = len(jobs)
    if args.jobs:
        jobs = {name: job for name, job in jobs.items() if any(fnmatch.fnmatchcase(name, p) for p in args.jobs)}
        if not jobs:
            print(f"kdbench: error: {args.configfile}: no planned job matches {' '.join(args.jobs)}. Fix: a shell "
                  f"pattern over the names `kdbench plan {args.configfile}` lists, e.g. 'variants/mnist_*'",
                  file=sys.stderr)
            return 1
    runs = layout.runs(cfg["profile"])
    if args.targets:
        print(" ".join(str(layout.metrics(runs, job.name, s)) for job in jobs.values() for s in job.seeds))
        return 0
    for job in jobs.values():
        line = f"{job.name}  seeds={list(job.seeds)}"
        print(line + (f"  {json.dumps(job.config, sort_keys=True)}" if args.configs else ""))
    if args.jobs:
        print(f"{len(jobs)} of the {every} training jobs match {' '.join(args.jobs)}; what they need that is not "
              f"here (teachers, ensembles, a temperature's candidates) is not counted: `snakemake -n` on their "
              f"targets (--targets) lists it all with its time")
    else:
        print(f"{every} training jobs (plus the specialists, once their clusters are known)")
    note = estimate.announce(cfg, estimate.not_run(jobs, runs))
    print(note or "every planned job has its run records, weights and logits here: nothing to train")
    return 0


def cmd_check(args) -> int:
    return check.main(args.configfile)


def cmd_compare(args) -> int:
    return report_compare.main(args.a, args.b, "all" if args.all else "differing")


def cmd_clusters(args) -> int:
    try:
        found = specialists.clusters_for(json.loads(args.config_json), args.dataset, args.generalist_logits)
    except ValueError as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 1
    atomic_write_json(args.out, found)
    print(f"{args.dataset}: {len(found['clusters'])} clusters {found['clusters']} -> {args.out}")
    return 0


def cmd_summary(args) -> int:
    df = aggregate.concat_summaries(args.parts)
    aggregate.write_csv(df, args.out)
    prov = [str(p).replace("_summary.csv", "_provenance.csv") for p in args.parts]
    aggregate.write_csv(aggregate.concat_provenance(prov), Path(args.out).with_name("provenance.csv"))
    print(f"{len(df)} rows -> {args.out}")
    return 0


def cmd_report(args) -> int:
    """`snakemake --report`, its output passed through except one warning per result file that has no snakemake
    metadata here (every committed result in a fresh clone: hundreds of lines), which becomes one line."""
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
