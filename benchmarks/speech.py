"""Speech-frame training speed, as a ratio against a plain reference timed in the same process on the same device.

What this file achieves: on the documented FSDD split (about 104k training frames of 26 x 40 log-mel windows) it
times one epoch of the ensembles section's net (1040-256-256-256-31, hard targets) as
  (a) the reference: a `torch.utils.data.Dataset` whose `__getitem__` slices one 26-frame window out of the frame
      tensor, `DataLoader(batch_size=128, shuffle=True)`, an `nn.Sequential` MLP;
  (b) kdbench: `kdbench.engine.train.train` (window starts on the device, one gather per batch);
and a 10-member ensemble trained one member after another vs as one batched model. It writes
results/bench/speech.csv (case, device, seconds_per_epoch, ratio_vs_reference, reference_case, steps_timed).
No test reads these timings.

Usage: python benchmarks/speech.py [--device auto] [--ref-steps N] [--out results/bench/speech.csv]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from kdbench.data import datasets as kdata
from kdbench.data import speech
from kdbench.engine.train import pick_device, resolve_spec, train
from kdbench.records import device_description, speed_row

NET = dict(dataset="speech", widths=[1040, 256, 256, 256, 31], batch_size=128, lr=0.05, momentum=0.9,
           nesterov=True, val_size=0, epochs=2, schedule="constant")


class Windows(torch.utils.data.Dataset):
    """The plain way: one window per __getitem__."""

    def __init__(self, split):
        self.frames, self.starts, self.y = split.frames, split.x, split.y

    def __len__(self):
        return self.y.shape[0]

    def __getitem__(self, i):
        s = int(self.starts[i])
        return self.frames[s:s + speech.CONTEXT].flatten(), self.y[i]


def reference_epoch(split, device, max_steps=None) -> tuple[float, int]:
    loader = torch.utils.data.DataLoader(Windows(split), batch_size=128, shuffle=True)
    w = NET["widths"]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(w[:-1], w[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(w) - 2 else [])
    model = nn.Sequential(*layers).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    total = math.ceil(len(split) / 128)
    steps = min(total, max_steps or total)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * total / steps, steps


def kdbench_epoch(seeds, out, root, device) -> float:
    return train(resolve_spec(NET), seeds, out, device=str(device), root=root, progress=False)[0]["epoch_seconds"][-1]


def main(argv=None):
    import pandas as pd

    from kdbench.report.aggregate import write_csv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--root", default=None, help="data directory (default: $KDBENCH_DATA or ./data)")
    ap.add_argument("--ref-steps", type=int, default=None, help="time only N reference steps and extrapolate")
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--out", default="results/bench/speech.csv")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    root = args.root or kdata.default_root()
    split = speech.load("speech", True, root, "cpu")
    desc = device_description(device)
    steps_epoch = math.ceil(len(split) / 128)
    rows = []

    def add(case, sec, ref_case=None, ref_sec=None, steps=steps_epoch):
        rows.append(speed_row(case, desc, sec, steps, ref_case, ref_sec))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref, st = reference_epoch(split, device, args.ref_steps)
        add("reference_speech_net", ref, steps=st)
        one = kdbench_epoch([0], tmp / "one", root, device)
        add("kdbench_speech_net", one, "reference_speech_net", ref)
        seq = sum(kdbench_epoch([m], tmp / f"seq{m}", root, device) for m in range(args.members))
        add(f"kdbench_ensemble{args.members}_sequential", seq)
        bat = kdbench_epoch(list(range(args.members)), tmp / "batched", root, device)
        add(f"kdbench_ensemble{args.members}_batched", bat, f"kdbench_ensemble{args.members}_sequential", seq)
        add(f"kdbench_ensemble{args.members}_batched_vs_reference", bat / args.members, "reference_speech_net", ref)
    write_csv(pd.DataFrame(rows), args.out)
    print(f"wrote {args.out} (torch {torch.__version__}, {desc})")


if __name__ == "__main__":
    main()
