"""Small exact checks of pieces whose breakage the end-to-end tests cannot see: gradient clipping, the LR schedule,
the geometric ensemble, the dustbin shift, and the share-of-gain formula. Each fails if its piece is made a no-op,
a constant, or swapped for its neighbour."""
import dataclasses
import math

import pytest
import torch

from kdbench.engine import train
from kdbench.engine.models import MLP
from kdbench.report import aggregate
from kdbench.sections import ensembles, specialists
from kdbench.spec import OptimSpec


def test_clipping_scales_each_member_to_the_bound_and_leaves_small_ones_alone():
    a = torch.nn.Parameter(torch.zeros(3, 2, 2))
    b = torch.nn.Parameter(torch.zeros(3, 2))
    a.grad = torch.tensor([[[3.0, 0], [0, 0]], [[0.1, 0], [0, 0]], [[0, 0], [0, 6.0]]])
    b.grad = torch.tensor([[4.0, 0], [0.0, 0], [0, 8.0]])  # member norms: 5, 0.1, 10
    train._clip_per_member([a, b], 1.0)
    norms = (a.grad.pow(2).flatten(1).sum(1) + b.grad.pow(2).sum(1)).sqrt()
    torch.testing.assert_close(norms, torch.tensor([1.0, 0.1, 1.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(a.grad[0, 0, 0] / b.grad[0, 0], torch.tensor(0.75))  # direction kept


def test_the_engine_clips_with_a_tiny_bound_the_weights_barely_move(mnist_root, tmp_path):
    cfg = dict(widths=[784, 32, 10], epochs=1, train_fraction=0.02, val_size=500, lr=0.1, momentum=0.0, nesterov=False,
               grad_clip=1e-6, schedule="constant")
    init = MLP(cfg["widths"], members=1, seeds=[0]).state_dict()

    def stop(epoch, history):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.train(train.resolve_spec(cfg), [0], tmp_path / "c", device="cpu", root=mnist_root, progress=False,
                    on_epoch_end=stop)
    student = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)["model"]  # the net and a variant's own
    ck = {k.removeprefix("model."): v for k, v in student.items()}  # tensors (none for `hard`)
    assert ck.keys() == init.keys()
    steps = math.ceil(round(0.02 * 59500) / 128)
    moved = max(float((ck[k] - init[k]).abs().max()) for k in init)
    assert moved <= steps * 0.1 * 1e-6 * 1.01  # every step moved each member by at most lr * bound


@pytest.mark.parametrize("step, factor", [(0, 1.0), (50, 0.5), (100, 0.0), (25, 0.5 * (1 + math.cos(math.pi / 4)))])
def test_cosine_schedule_values(step, factor):
    cfg = OptimSpec(schedule="cosine", warmup_epochs=0.0)
    assert train._lr_factor(cfg, step, 100, 10) == pytest.approx(factor, abs=1e-9)


def test_warmup_then_cosine_and_constant():
    cfg = OptimSpec(schedule="cosine", warmup_epochs=1.0)
    assert [train._lr_factor(cfg, s, 110, 10) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert train._lr_factor(cfg, 60, 110, 10) == pytest.approx(0.5)
    assert train._lr_factor(dataclasses.replace(cfg, schedule="constant"), 60, 110, 10) == 1.0


def test_the_engine_follows_the_schedule(mnist_root, tmp_path):
    """Half-way through a cosine run the optimizer's learning rate is half the base rate."""
    cfg = dict(widths=[784, 16, 10], epochs=2, train_fraction=0.02, val_size=500, lr=0.08)

    def stop(epoch, history):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.train(train.resolve_spec(cfg), [0], tmp_path / "s", device="cpu", root=mnist_root, progress=False,
                    on_epoch_end=stop)
    opt = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=False)["opt"]
    assert opt["lr"] == pytest.approx(0.04, rel=1e-6)


def test_geometric_and_arithmetic_ensembles_by_hand():
    p1, p2 = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.1, 0.6, 0.3])
    logits = torch.stack([p1.log(), p2.log()])[:, None, :]  # (M=2, N=1, C=3)
    arith = ensembles.combine(logits, "arithmetic")[0].exp()
    geo = ensembles.combine(logits, "geometric")[0].exp()
    torch.testing.assert_close(arith, (p1 + p2) / 2)
    g = (p1 * p2).sqrt()
    torch.testing.assert_close(geo, g / g.sum())
    assert int(arith.argmax()) != int(geo.argmax()) or not torch.allclose(arith, geo)


def test_the_dustbin_shift_raises_the_dustbin_by_exactly_its_odds():
    z = torch.tensor([[1.0, 0.5, 0.2]])  # two cluster classes, dustbin last
    plain = specialists.specialist_log_probs(z, torch.tensor(0.0)).exp()
    shifted = specialists.specialist_log_probs(z, torch.tensor(math.log(3.0))).exp()
    odds = lambda p: p[0, -1] / p[0, :-1].sum()
    assert float(odds(shifted) / odds(plain)) == pytest.approx(3.0)
    assert float(shifted[0, 0] / shifted[0, 1]) == pytest.approx(float(plain[0, 0] / plain[0, 1]))


@pytest.mark.parametrize("value, low, high, share", [(60.0, 50.0, 70.0, 50.0), (70.0, 50.0, 70.0, 100.0),
                                                      (45.0, 50.0, 70.0, -25.0), (1.0, 1.0, 1.0, math.nan)])
def test_one_seeds_share_of_a_gap(value, low, high, share):
    got = aggregate.share_of_gap(value, low, high)
    assert (math.isnan(got) and math.isnan(share)) or got == pytest.approx(share)


def test_a_share_is_the_ratio_of_seed_means_with_the_delta_method_interval():
    """Seed 0 closes 1 of a 1-point gap, seed 1 9 of a 19-point gap: the ratio of means is 10/20 = 50% (the mean of
    the per-seed shares, 73.7%, would let the tiny gap dominate). Its interval is the ratio estimator's."""
    parts = [(0, 2.0, 1.0, 2.0), (1, 19.0, 10.0, 29.0)]
    cell = aggregate.share_cell("d", "t", "s", "gap_closed_pct", [(*p, f"src{p[0]}") for p in parts])
    row = cell.summary({})
    assert row["mean"] == pytest.approx(50.0)
    d = [100 * ((2 - 1) - 0.5 * 1) / 10, 100 * ((19 - 10) - 0.5 * 19) / 10]  # a_s - R b_s over mean(b)
    std = math.sqrt(sum(x * x for x in d) / 1)  # their mean is 0
    assert row["std"] == pytest.approx(std)
    half = aggregate.t_crit(1) * std / math.sqrt(2)
    assert (row["ci95_low"], row["ci95_high"]) == (pytest.approx(50 - half), pytest.approx(50 + half))
    assert [v for _, v, _ in cell.values] == [pytest.approx(100.0), pytest.approx(100 * 9 / 19)]
    assert [src for _, _, src in cell.values] == ["src0", "src1"]
    one = aggregate.share_cell("d", "t", "s", "gap_closed_pct", [(0, 1.0, 1.0, 1.0, "x")])
    assert math.isnan(one.summary({})["mean"])
    with pytest.raises(ValueError, match="a share's metric"):  # a reader of the tables must know it is a share
        aggregate.share_cell("d", "t", "s", "test_errors", [(*p, "x") for p in parts])


@pytest.mark.parametrize("errors, pooled, chosen", [
    ({1.0: 10.0, 2.0: 10.5, 5.0: 12.0}, 1000, 2.0),   # 2 is within one SE (0.95) of the best: the paper's T
    ({1.0: 10.0, 2.0: 11.0, 5.0: 12.0}, 1000, 1.0),   # 2 is 1 point off, beyond one SE: the best
    ({1.0: 10.0, 2.0: 10.5, 5.0: 12.0}, 100000, 1.0),  # many examples: the SE shrinks to 0.09
    ({1.0: 12.0, 5.0: 10.0, 10.0: 10.2}, 1000, 5.0),  # no T=2 candidate: the tied one nearest it on a log scale
])
def test_the_temperature_goes_to_the_papers_only_inside_the_validation_noise(errors, pooled, chosen):
    assert ensembles.pick_temperature(errors, pooled) == chosen


def test_table1s_main_row_is_the_paper_split_row_whose_ensemble_gains_most_on_validation():
    cfg = {"ensembles": {"datasets": {"speech": {}, "narrow": {"data": "speech"}, "other": {}}}}
    assert ensembles.main_row(cfg, {"speech": [1.0, 1.2], "narrow": [2.0, 0.0], "other": [9.0, 9.0]}) == "speech"
    assert ensembles.main_row(cfg, {"speech": [1.0, 1.2], "narrow": [2.0, 0.6], "other": [9.0, 9.0]}) == "narrow"
    assert ensembles.main_row({"ensembles": {"datasets": {"other": {}}}}, {"other": [1.0]}) is None
    # a row kept without its validation gain (write and kdbench check alike) is passed over, not divided by zero
    assert ensembles.main_row(cfg, {"speech": [], "narrow": [2.0, 0.6]}) == "narrow"
    assert ensembles.main_row(cfg, {"speech": []}) is None


def _predicting(correct: list[int], n: int = 10) -> torch.Tensor:
    """Logits (K, n, 2) for labels all 0: member k right on its first correct[k] examples."""
    z = torch.zeros(len(correct), n, 2)
    for k, c in enumerate(correct):
        z[k, :c, 0], z[k, c:, 1] = 1.0, 1.0
    return z


@pytest.mark.parametrize("mixup", [False, True])
def test_table5_gives_every_seed_its_share_and_keeps_mixup_rows_apart(tmp_path, mixup):
    """Seed s: the 100% net (member 0 of its ensemble) 80%, soft targets 70%, the 3% hard net 50% / 80%. Seed 1 has
    no gap, and still counts: the share is the ratio of seed means, (70 - 65) / (80 - 65) = 33.3%. With mixup in the
    profile its pair of 3% nets gets rows of its own and the paper-protocol rows stay what they were."""
    import json

    from kdbench import layout
    cfg = {"seeds": [0, 1], "ensembles": {"members": 2, "distilled": {"temperatures": [1]},
                                          "fraction": {"mixup": 1.0} if mixup else {}}}
    labels = torch.zeros(10, dtype=torch.long)
    runs = [("base3", [5, 8]), ("soft3", [7, 7])]
    runs += [("base3_mixup", [6, 6]), ("soft3_mixup", [8, 8])] if mixup else []
    for run, correct in runs:
        path = layout.logits(tmp_path, ensembles.job("d", run))
        path.parent.mkdir(parents=True)
        torch.save({"test": _predicting(correct)}, path)
        for s in (0, 1):
            layout.metrics(tmp_path, ensembles.job("d", run), s).parent.mkdir()
            layout.metrics(tmp_path, ensembles.job("d", run), s).write_text(json.dumps(
                {"train_accuracy": 0.9, "final_epoch": 3}))
    for s in (1000, 1001, 1100, 1101):
        p = layout.metrics(tmp_path, ensembles.job("d", "ensemble"), s)
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"train_accuracy": 0.95}))
    ens = {"test": _predicting([8, 5, 8, 5])}  # member 0 of each seed's ensemble: 80%
    cells = []
    evaluate = lambda z: {"test_accuracy_pct": ensembles.accuracy_pct(z, labels)}  # noqa: E731
    ensembles._table5(cfg, tmp_path, "d", ens, evaluate, ensembles.Adder(cells, "d"))
    shares = {c.system: c.summary({}) for c in cells if c.metric == "gap_recovered_pct"}
    assert shares["soft_3"]["mean"] == pytest.approx(100 * (70 - 65) / (80 - 65))
    assert shares["soft_3"]["n_seeds"] == 2
    assert {c.system for c in cells} == ({"baseline_100", "baseline_3", "soft_3"}
                                         | ({"baseline_3_mixup", "soft_3_mixup"} if mixup else set()))
    if mixup:
        assert shares["soft_3_mixup"]["mean"] == pytest.approx(100 * (80 - 60) / (80 - 60))
