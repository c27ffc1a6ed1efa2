"""Engine speed, always as a ratio against a plain reference timed in the same process on the same device.

What this file achieves: it times one training epoch on all 60,000 MNIST images of
  (a) the reference, the way most KD repositories do it: `torchvision.datasets.MNIST` with `ToTensor`/`Normalize`
      (and `RandomCrop(28, padding=2)` for the jittered teacher), `DataLoader(batch_size=128, shuffle=True)`, an
      `nn.Module` MLP, and for KD the teacher run forward on every student step;
  (b) kdbench doing the same work through `kdbench.engine.train.train` (data on the device as tensors, jitter on the
      device, teacher logits read from the cache): the 784-1200-1200-10 dropout/max-norm teacher with jitter, the
      784-800-800-10 student distilled at T=20, and 5 seeds of that student trained one after another vs batched.
  (c) candidates for kdbench's training step, each timed as `steps` steps of the engine's real hot path
      (`Engine.step`) and scaled to an epoch, against today's fp32 step of the same net in the same run: bf16
      autocast (`precision: bf16`, fp32 master weights), one `addmm` per layer instead of a `baddbmm` over a batch of
      one member (`kdbench.engine.models.SINGLE_MEMBER_MM`), one thread instead of two, and `torch.compile` of the net
      (its compile seconds reported beside it, since a short job pays them once), and on a CPU the layers' products
      through numpy's BLAS (`kdbench.engine.models.MATMUL = "numpy"`, issue 36) for one member and five batched;
  (d) on a CPU, every matrix product of the teacher's, the 800-800 student's and the speech nets' steps (forward and
      both gradient products) through each library, each library timed in a process of its own: torch's BLAS (MKL),
      numpy's (OpenBLAS), oneDNN's fp32 inner product, and torch in bf16 (a precision, timed beside them), single
      member and five batched, as seconds per product (ratio: the speed-up over torch); then the teacher step's GF/s
      against the best rate its products reach (each through its fastest fp32 library), printed.
It prints seconds per epoch and the ratio of each case to its reference, and writes results/bench/engine.csv
(case, device, seconds_per_epoch, ratio_vs_reference, reference_case, steps_timed). No test reads these timings.

Usage: python benchmarks/engine.py [--device auto] [--ref-steps N] [--out results/bench/engine.csv]
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from kdbench.data import datasets as kdata
from kdbench.engine.losses import distillation_loss
from kdbench.engine.train import pick_device, resolve_spec, teacher_logits, train
from kdbench.records import device_description, speed_row
from kdbench.report.aggregate import write_csv

TEACHER = dict(widths=[784, 1200, 1200, 10], dropout_input=0.2, dropout_hidden=0.5, max_norm=3.5, jitter=2)
STUDENT = dict(widths=[784, 800, 800, 10])
COMMON = dict(batch_size=128, lr=0.05, momentum=0.9, nesterov=True, val_size=0, epochs=2, schedule="constant")
KD = dict(variant="hinton", variant_params={"temperature": 20.0, "hard_weight": 0.1}, grad_clip=5.0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_mlp(widths, p_in=0.0, p_hidden=0.0) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(p_in)]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [nn.ReLU(), nn.Dropout(p_hidden)]
    return nn.Sequential(*layers)


def reference_epoch(root, device, teacher: nn.Module | None, jitter: bool, widths, dropout=(0.0, 0.0),
                    max_norm=None, max_steps=None) -> tuple[float, int]:
    """Seconds per epoch of the DataLoader-style reference (extrapolated from max_steps if given)."""
    from torchvision import datasets, transforms
    tf = [transforms.RandomCrop(28, padding=2)] if jitter else []
    tf += [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    ds = datasets.MNIST(str(root), train=True, download=False, transform=transforms.Compose(tf))
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True)
    model = plain_mlp(widths, *dropout).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps_total = math.ceil(len(ds) / 128)
    steps = min(steps_total, max_steps or steps_total)
    sync(device)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        x, y = x.to(device), y.to(device)
        out = model(x)
        if teacher is not None:
            with torch.no_grad():
                t = teacher(x)
            loss = distillation_loss(out, t, y, 20.0, 0.1)
        else:
            loss = nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        if teacher is not None:
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if max_norm:
            with torch.no_grad():
                for m in list(model.modules())[:-1]:
                    if isinstance(m, nn.Linear) and m.out_features != 10:
                        m.weight.copy_(torch.renorm(m.weight, 2, 0, max_norm))
    sync(device)
    return (time.perf_counter() - t0) * steps_total / steps, steps


def kdbench_epoch(cfg, seeds, out, root, device) -> float:
    """Seconds of the last epoch of a kdbench run (the first one pays one-time costs)."""
    rec = train(resolve_spec(cfg), seeds, out, device=str(device), root=root, progress=False)[0]
    return rec["epoch_seconds"][-1]


def engine_epoch(cfg: dict, seeds, root, device, steps: int = 40, threads: int | None = None,
                 compiled: bool = False) -> tuple[float, float]:
    """(seconds per epoch, one-time seconds) of kdbench's training step for `cfg`, from `steps` timed steps after
    warm-up ones; the one-time seconds are what the warm-up cost beyond its steps (compilation)."""
    from kdbench.engine.train import build_engine, load_run_data
    spec = resolve_spec(cfg)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        data = load_run_data(spec, seeds, root, device)
        eng = build_engine(spec, seeds, data, device)
        if compiled:
            eng.student.model.forward = torch.compile(eng.student.model.forward)
        perm, bs = data.sampler.epoch(), spec.optimisation.batch_size
        batch = lambda i: perm[:, (i % eng.steps_per_epoch) * bs:(i % eng.steps_per_epoch + 1) * bs]
        sync(device)
        t0 = time.perf_counter()
        for i in range(5):
            eng.step(data, batch(i))
        sync(device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(5, 5 + steps):
            eng.step(data, batch(i))
        sync(device)
        per_step = (time.perf_counter() - t0) / steps
    finally:
        torch.set_num_threads(before)
    return per_step * eng.steps_per_epoch, max(0.0, warm - 5 * per_step)


def step_candidates(add, net: str, cfg: dict, root, device, steps: int) -> dict[str, float]:
    """Rows of the step candidates for one net, each against its fp32 step timed in the same run; returns the
    seconds per epoch of the fastest path for one member and for five batched ({"1": s, "5": s})."""
    from kdbench.engine import models, optim
    base, _ = engine_epoch(cfg, [0], root, device, steps)
    fastest = {"1": base}
    ref = f"step_{net}_fp32"
    add(ref, base, steps=steps)
    add(f"step_{net}_bf16_autocast", engine_epoch({**cfg, "precision": "bf16"}, [0], root, device, steps)[0], ref, base,
        steps=steps)
    models.SINGLE_MEMBER_MM = not models.SINGLE_MEMBER_MM
    try:
        other, _ = engine_epoch(cfg, [0], root, device, steps)
    finally:
        models.SINGLE_MEMBER_MM = not models.SINGLE_MEMBER_MM
    add(f"step_{net}_{'bmm' if models.SINGLE_MEMBER_MM else 'addmm'}_single_member", other, ref, base, steps=steps)
    add(f"step_{net}_1_thread", engine_epoch(cfg, [0], root, device, steps, threads=1)[0], ref, base, steps=steps)
    fastest["5"], _ = engine_epoch(cfg, list(range(5)), root, device, steps)
    for members, reference in ((1, base), (5, fastest["5"])):  # torch's fused SGD kernel (kdbench.engine.optim.FUSED)
        optim.FUSED = not optim.FUSED
        try:
            other, _ = engine_epoch(cfg, list(range(members)), root, device, steps)
        finally:
            optim.FUSED = not optim.FUSED
        add(f"step_{net}_{members}_members_{'loop' if optim.FUSED else 'fused'}_sgd", other, ref if members == 1
            else f"step_{net}_5_members", reference, steps=steps)
    add(f"step_{net}_5_members", fastest["5"], steps=steps)
    if device.type == "cpu":  # issue 36: the layers' products through numpy's BLAS (kdbench.engine.blas)
        for members, reference in ((1, base), (5, fastest["5"])):
            add(f"step_{net}_{members}_members_torch", reference, steps=steps)
            models.MATMUL = "numpy"
            try:
                other, _ = engine_epoch(cfg, list(range(members)), root, device, steps)
            finally:
                models.MATMUL = "torch"
            add(f"step_{net}_{members}_members_numpy_blas", other, f"step_{net}_{members}_members_torch", reference,
                steps=steps)
            fastest[str(members)] = min(fastest[str(members)], other)
    add(f"step_{net}_5_members_batched_per_member", engine_epoch(cfg, list(range(5)), root, device, steps)[0] / 5,
        ref, base, steps=steps)
    try:
        comp, once = engine_epoch(cfg, [0], root, device, steps, compiled=True)
        add(f"step_{net}_torch_compile (compile {once:.0f} s once)", comp, ref, base, steps=steps)
    except Exception as e:  # noqa: BLE001  (a compiler missing or failing is a result too)
        print(f"torch.compile failed for {net}: {type(e).__name__}: {str(e)[:200]}")
    return fastest


def step_flops(widths: list[int], batch: int = 128) -> float:
    """Floating-point operations of an MLP training step's matrix products for one member: the forward product, the
    weight gradient of every layer and the input gradient of every layer but the first, 2 m k n each."""
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return 2.0 * batch * (3 * macs - widths[0] * widths[1])


def step_share(add, widths: list[int], fastest: dict[str, float], products: dict, steps_per_epoch: int) -> None:
    """The teacher step's GF/s (its products' flops over the whole step's time, one member and five batched) against
    the best rate its products reach in this run: the flops of its products over the sum of each product's time
    through the fastest fp32 library (so a step doing nothing but its products, each at its best, would reach 100%).
    The fastest single product is printed beside it. Rows: ratio = the share of the best rate."""
    teacher = {key: libs for key, libs in products.items() if key[0] == "teacher"}
    flops = sum(2 * m * k * n for (_, _, _, (m, k, n)) in teacher)
    best_time = sum(min(t for lib, t in libs.items() if lib in FP32_LIBS) for libs in teacher.values())
    best = flops / best_time
    top = max(2 * m * k * n / t for (_, _, _, (m, k, n)), libs in teacher.items() for lib, t in libs.items()
              if lib in FP32_LIBS)
    for members, seconds in fastest.items():
        step = seconds / steps_per_epoch
        step_flops_ = int(members) * step_flops(widths)
        print(f"teacher step, {members} member(s): {step_flops_ / step / 1e9:.1f} GF/s = "
              f"{100 * step_flops_ / step / best:.0f}% of the best rate of its products in this run "
              f"({best / 1e9:.1f} GF/s, each product through its fastest fp32 library; the fastest single product "
              f"{top / 1e9:.1f} GF/s)")
        add(f"teacher_step_{members}_members_vs_best_product_rate", step, "flops at the best product rate",
            step_flops_ / best, steps=1)


# the MLPs' matrix products per training step (m x k @ k x n): forward, and the two gradient products of backward
SHAPES = {"teacher": [784, 1200, 1200, 10], "student_800": [784, 800, 800, 10], "speech_1024": [1040, 1024, 1024, 31],
          "speech_narrow": [1040, 32, 32, 31]}
# the libraries a product is timed through, each in a process of its own (two BLAS thread pools in one process
# slow each other: interleaved in one process the same torch product read 97 and 297 GF/s). bf16 is torch's product
# in bfloat16 (AMX or AVX-512 bf16 units where the CPU has them): a precision, not an fp32 path, so it is timed
# beside them but never counted as the best fp32 rate
FP32_LIBS = ("torch", "numpy", "onednn")
LIBS = FP32_LIBS + ("bf16",)
BATCHED = 5  # members of the batched products (torch's bmm, numpy's batched matmul; oneDNN has no batched weights)


def product_shapes(batch: int = 128):
    """(net, layer, what, (m, k, n)) of every product of each net's training step."""
    for net, widths in SHAPES.items():
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            for what, mkn in (("fwd", (batch, a, b)), ("grad_x", (batch, b, a)), ("grad_w", (a, batch, b))):
                yield net, i, what, mkn


def product_call(lib: str, x: torch.Tensor, w: torch.Tensor):
    """A call computing x @ w through `lib` (x (K, m, k), w (K, k, n); K=1 is the single member's 2-D product), its
    operands prepared once as the library wants them."""
    import numpy as np
    if lib == "torch":
        return (lambda: torch.mm(x[0], w[0])) if x.shape[0] == 1 else (lambda: torch.bmm(x, w))
    if lib == "numpy":
        a, b = (x[0].numpy(), w[0].numpy()) if x.shape[0] == 1 else (x.numpy(), w.numpy())
        return lambda: np.matmul(a, b)
    if lib == "onednn":  # oneDNN's fp32 inner product on dense tensors, its weight stored (n, k) as it wants it
        x0, wt = x[0], w[0].t().contiguous()
        return lambda: torch.ops.mkldnn._linear_pointwise(x0, wt, None, "none", [], "")
    xb, wb = x[0].bfloat16(), w[0].bfloat16()
    return lambda: torch.mm(xb, wb)


def time_products(lib: str, repeats: int = 7) -> dict[str, float]:
    """Median seconds of each product through `lib` (run in a process of its own): single member, and batched over
    BATCHED members where the library has a batched product. Keys "net|layer|what|members"."""
    import statistics
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    out = {}
    for net, i, what, (m, k, n) in product_shapes():
        for members in (1, BATCHED):
            if members > 1 and lib not in ("torch", "numpy"):
                continue
            fn = product_call(lib, torch.randn(members, m, k, generator=g), torch.randn(members, k, n, generator=g))
            try:
                fn()
            except (RuntimeError, AttributeError) as e:  # a library missing here is a result too
                print(f"{lib}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                return out
            reps = max(1, int(2e8 / (2 * members * m * k * n)))
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                times.append((time.perf_counter() - t0) / reps)
            out[f"{net}|{i}|{what}|{members}"] = statistics.median(times)
    return out


def product_rows(add) -> dict:
    """Every product of each net's step through each library, each library timed in its own process, one after
    another; rows as seconds per product, each against torch's time for the same product (ratio: the speed-up over
    torch). Returns {(net, layer, what, (m, k, n)): {lib: seconds}} for single members, and prints GF/s."""
    import json
    import subprocess
    import sys
    timed = {}
    for lib in LIBS:
        done = subprocess.run([sys.executable, __file__, "--products-of", lib], capture_output=True, text=True,
                              check=True)
        timed[lib] = json.loads(done.stdout.strip().splitlines()[-1])
    products = {}
    for net, i, what, (m, k, n) in product_shapes():
        for members in (1, BATCHED):
            key = f"{net}|{i}|{what}|{members}"
            if key not in timed["torch"]:
                continue
            libs = {lib: timed[lib][key] for lib in LIBS if key in timed[lib]}
            name = f"product_{net}_layer{i}_{what}_{m}x{k}x{n}" + (f"_x{members}" if members > 1 else "")
            flops = 2 * members * m * k * n
            print(f"{name}: " + ", ".join(f"{lib} {flops / t / 1e9:.1f} GF/s" for lib, t in libs.items()))
            for lib, t in libs.items():
                if lib == "torch":
                    add(f"{name}_torch", t, steps=1)
                else:
                    add(f"{name}_{lib}", t, f"{name}_torch", libs["torch"], steps=1)
            if members == 1:
                products[(net, i, what, (m, k, n))] = libs
    return products


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--root", default=None, help="data directory (default: $KDBENCH_DATA or ./data)")
    ap.add_argument("--ref-steps", type=int, default=None, help="time only N reference steps and extrapolate")
    ap.add_argument("--out", default="results/bench/engine.csv")
    ap.add_argument("--candidate-steps", type=int, default=40, help="timed steps of each training-step candidate")
    ap.add_argument("--products-of", choices=LIBS, help=argparse.SUPPRESS)  # the child process of product_rows
    args = ap.parse_args(argv)
    if args.products_of:
        import json
        print(json.dumps(time_products(args.products_of)))
        return
    device = pick_device(args.device)
    root = kdata.fetch("mnist", args.root)
    desc = device_description(device)
    rows = []

    epoch_steps = math.ceil(60000 / 128)

    def add(case, sec, ref_case=None, ref_sec=None, steps=epoch_steps):
        rows.append(speed_row(case, desc, sec, steps, ref_case, ref_sec))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # kdbench teacher (also the source of the cached logits the students read)
        tcfg = {**COMMON, **TEACHER}
        kd_teacher = kdbench_epoch(tcfg, [0], tmp / "teacher", root, device)
        teacher_logits(tmp / "teacher" / "model.pt", tmp / "tl.pt", root=root, device=str(device))
        blob = torch.load(tmp / "teacher" / "model.pt", map_location=device, weights_only=False)
        from kdbench.engine.models import MLP
        kt = MLP(**blob["model_config"]).to(device)
        kt.load_state_dict(blob["state_dict"])
        ref_teacher_net = nn.Sequential(nn.Flatten(), kt.member_module(0)).eval()

        ref_t, st = reference_epoch(root, device, None, True, TEACHER["widths"], (0.2, 0.5), 3.5, args.ref_steps)
        add("reference_teacher_jitter", ref_t, steps=st)
        add("kdbench_teacher_jitter", kd_teacher, "reference_teacher_jitter", ref_t)

        ref_s, st = reference_epoch(root, device, ref_teacher_net, False, STUDENT["widths"], max_steps=args.ref_steps)
        add("reference_kd_student_T20", ref_s, steps=st)
        scfg = {**COMMON, **STUDENT, **KD, "teacher_logits": str(tmp / "tl.pt")}
        kd_s = kdbench_epoch(scfg, [0], tmp / "student", root, device)
        add("kdbench_kd_student_T20", kd_s, "reference_kd_student_T20", ref_s)

        seq = sum(kdbench_epoch(scfg, [s], tmp / f"seq{s}", root, device) for s in range(5))
        add("kdbench_kd_student_5seeds_sequential", seq)
        bat = kdbench_epoch(scfg, list(range(5)), tmp / "batched", root, device)
        add("kdbench_kd_student_5seeds_batched", bat, "kdbench_kd_student_5seeds_sequential", seq)
        add("kdbench_kd_student_5seeds_batched_vs_reference", bat / 5, "reference_kd_student_T20", ref_s)

        fastest = step_candidates(add, "teacher", tcfg, root, device, args.candidate_steps)
        step_candidates(add, "kd_student_T20", scfg, root, device, args.candidate_steps)
        if device.type == "cpu":
            step_share(add, TEACHER["widths"], fastest, product_rows(add), epoch_steps)

    out = Path(args.out)
    write_csv(pd.DataFrame(rows), out)
    print(f"wrote {out} (torch {torch.__version__}, {desc})")


if __name__ == "__main__":
    main()
