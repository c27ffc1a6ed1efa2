"""Small exact checks of pieces whose breakage the end-to-end tests cannot see: gradient clipping, the LR schedule,
the geometric ensemble, the dustbin shift, and the share-of-gain formula. Each fails if its piece is made a no-op,
a constant, or swapped for its neighbour."""
import math

import pytest
import torch

from kdbench import ensembles, specialists, train
from kdbench.models import MLP


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
        train.train(cfg, [0], tmp_path / "c", device="cpu", root=mnist_root, progress=False, on_epoch_end=stop)
    student = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)["model"]  # the net and a variant's own
    ck = {k.removeprefix("model."): v for k, v in student.items()}  # tensors (none for `hard`)
    assert ck.keys() == init.keys()
    steps = math.ceil(round(0.02 * 59500) / 128)
    moved = max(float((ck[k] - init[k]).abs().max()) for k in init)
    assert moved <= steps * 0.1 * 1e-6 * 1.01  # every step moved each member by at most lr * bound


@pytest.mark.parametrize("step, factor", [(0, 1.0), (50, 0.5), (100, 0.0), (25, 0.5 * (1 + math.cos(math.pi / 4)))])
def test_cosine_schedule_values(step, factor):
    cfg = {**train.DEFAULTS, "schedule": "cosine", "warmup_epochs": 0.0}
    assert train._lr_factor(cfg, step, 100, 10) == pytest.approx(factor, abs=1e-9)


def test_warmup_then_cosine_and_constant():
    cfg = {**train.DEFAULTS, "schedule": "cosine", "warmup_epochs": 1.0}
    assert [train._lr_factor(cfg, s, 110, 10) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert train._lr_factor(cfg, 60, 110, 10) == pytest.approx(0.5)
    assert train._lr_factor({**cfg, "schedule": "constant"}, 60, 110, 10) == 1.0


def test_the_engine_follows_the_schedule(mnist_root, tmp_path):
    """Half-way through a cosine run the optimizer's learning rate is half the base rate."""
    cfg = dict(widths=[784, 16, 10], epochs=2, train_fraction=0.02, val_size=500, lr=0.08)

    def stop(epoch, history):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, [0], tmp_path / "s", device="cpu", root=mnist_root, progress=False, on_epoch_end=stop)
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
def test_share_recovered(value, low, high, share):
    got = ensembles.share_recovered(value, low, high)
    assert (math.isnan(got) and math.isnan(share)) or got == pytest.approx(share)


def _predicting(correct: list[int], n: int = 10) -> torch.Tensor:
    """Logits (K, n, 2) for labels all 0: member k right on its first correct[k] examples."""
    z = torch.zeros(len(correct), n, 2)
    for k, c in enumerate(correct):
        z[k, :c, 0], z[k, c:, 1] = 1.0, 1.0
    return z


@pytest.mark.parametrize("hard, no_gap", [([50, 60], []), ([80, 60], [0])])
def test_table5_gives_a_share_of_the_gap_only_where_every_seed_has_a_gap(tmp_path, hard, no_gap):
    """Seed s: the 100% net (member 0 of its ensemble) 80%, soft targets 70%, the 3% hard net `hard[s]`%. Where a
    seed's hard net is as good as its 100% net there is no gap, and no share of it is claimed."""
    import json
    from kdbench import layout
    cfg = {"seeds": [0, 1], "ensembles": {"members": 2}}
    labels = torch.zeros(10, dtype=torch.long)
    for run, correct in (("base3", [h // 10 for h in hard]), ("soft3", [7, 7])):
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
    facts = ensembles._table5(cfg, tmp_path, "d", ens, evaluate,
                              lambda table, system, metric, values, unit="pct": cells.append((system, metric, values)))
    shares = [[v for _, v, _ in values] for system, metric, values in cells if metric == "gap_recovered_pct"]
    assert facts["no_gap_seeds"] == no_gap
    if no_gap:
        assert shares == []
    else:
        assert shares == [[pytest.approx(100 * (70 - 50) / (80 - 50)), pytest.approx(100 * (70 - 60) / (80 - 60))]]
