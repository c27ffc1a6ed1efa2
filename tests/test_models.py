"""Batched members behave exactly like K separately built nets; max-norm; dropout."""
import pytest
import torch
from torch import nn

from kdbench.engine.models import MLP


def test_batched_forward_matches_separate_members():
    seeds = [3, 7, 11]
    batched = MLP([20, 16, 16, 5], members=3, seeds=seeds)
    x = torch.randn(3, 8, 20)
    out = batched(x)
    for k, seed in enumerate(seeds):
        alone = MLP([20, 16, 16, 5], members=1, seeds=[seed])
        assert torch.equal(alone.weights[0][0], batched.weights[0][k])  # own init from own seed
        assert torch.allclose(alone(x[k:k + 1])[0], out[k], atol=1e-6)
        assert torch.allclose(batched.member_module(k)(x[k]), out[k], atol=1e-6)
    assert not torch.allclose(out[0], out[1])


def test_batched_training_matches_separately_trained_modules():
    """SGD with momentum on the batched model equals training K plain nn.Sequential nets, each on its own batches."""
    torch.manual_seed(0)
    K, steps = 3, 5
    batched = MLP([12, 10, 4], members=K, seeds=[0, 1, 2])
    separate = [batched.member_module(k) for k in range(K)]
    xs, ys = torch.randn(steps, K, 6, 12), torch.randint(0, 4, (steps, K, 6))
    opt = torch.optim.SGD(batched.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True) for m in separate]
    for s in range(steps):
        opt.zero_grad()
        logits = batched(xs[s])
        sum(nn.functional.cross_entropy(logits[k], ys[s, k]) for k in range(K)).backward()
        opt.step()
        for k, (m, o) in enumerate(zip(separate, opts)):
            o.zero_grad()
            nn.functional.cross_entropy(m(xs[s, k]), ys[s, k]).backward()
            o.step()
    x = torch.randn(5, 12)
    out = batched(x)
    for k, m in enumerate(separate):
        assert torch.allclose(m(x), out[k], atol=1e-5)


def test_max_norm_caps_each_hidden_units_incoming_weights():
    m = MLP([30, 20, 10], members=2, max_norm=0.5)
    with torch.no_grad():
        m.weights[0].mul_(10)
        m.weights[0][1, :, 0] = 0.01  # a unit already inside the ball stays as it is
    before = m.weights[0][1, :, 0].clone()
    m.apply_max_norm()
    norms = m.weights[0].norm(dim=1)
    assert norms.max() <= 0.5 + 1e-5 and norms.min() > 0
    assert torch.equal(m.weights[0][1, :, 0], before)


def test_dropout_only_in_training_and_own_masks_per_member():
    m = MLP([50, 40, 3], members=2, seeds=[0, 0], dropout_input=0.2, dropout_hidden=0.5)
    x = torch.randn(4, 50)
    m.eval()
    a = m(x)
    assert torch.equal(a, m(x)) and torch.allclose(a[0], a[1])  # same seed, no dropout: identical members
    m.train()
    torch.manual_seed(1)
    b = m(x)
    assert not torch.allclose(b[0], b[1])  # identical weights, different masks


def test_dropout_scales_the_kept_units_and_zeroes_the_rest_with_the_mask_rand_ge_p():
    """The mask is `rand >= p` of the generator's stream (the stream every committed run drew), kept units scaled by
    1 / (1 - p): the same values as `x * keep / (1 - p)`, forward and backward."""
    m = MLP([30, 8, 3], dropout_input=0.25)
    m.train()
    x = torch.randn(1, 5, 30, requires_grad=True)
    torch.manual_seed(4)
    got = m._dropout(x, 0.25)
    torch.manual_seed(4)
    keep = torch.rand_like(x) >= 0.25
    want = x * keep / 0.75
    assert torch.equal(got, want) and 0 < keep.sum() < keep.numel()
    g = torch.randn_like(x)
    (ga,) = torch.autograd.grad(got, x, g)
    (gb,) = torch.autograd.grad(want, x, g)
    assert torch.equal(ga, gb)


def test_one_member_takes_the_2d_path_with_the_batched_paths_numbers():
    """K=1 multiplies 2-D views (addmm); its outputs, hidden features and gradients match the batched path's."""
    from kdbench.engine import models
    x = torch.randn(6, 20)
    out = {}
    for single in (True, False):
        models.SINGLE_MEMBER_MM = single
        try:
            m = MLP([20, 16, 16, 5], members=1, seeds=[3])
            logits, hidden = m(x, hidden=True)
            (logits.square().sum() + hidden.sum()).backward()
            out[single] = logits, hidden, [p.grad for p in m.parameters()]
        finally:
            models.SINGLE_MEMBER_MM = True
    (la, ha, ga), (lb, hb, gb) = out[True], out[False]
    assert la.shape == lb.shape == (1, 6, 5) and ha.shape == hb.shape == (1, 6, 16)
    assert torch.allclose(la, lb, atol=1e-6) and torch.allclose(ha, hb, atol=1e-6)
    assert all(a.shape == b.shape and torch.allclose(a, b, atol=1e-5) for a, b in zip(ga, gb))


@pytest.mark.parametrize("fused", [False, True])
def test_kdbench_sgd_is_torch_sgd_bit_for_bit(fused, monkeypatch):
    """kdbench.engine.optim.SGD (no torch.optim import in a job) makes torch.optim.SGD's updates exactly, with
    Nesterov momentum, plain momentum and weight decay: the loop torch's default for-loop, the fused kernel torch's
    `fused=True` (momentum 0 takes the loop either way), and each says which made its steps."""
    from kdbench.engine import optim
    monkeypatch.setattr(optim, "FUSED", fused)
    for kw in (dict(momentum=0.9, nesterov=True), dict(momentum=0.9), dict(momentum=0.5, weight_decay=1e-2), {}):
        torch.manual_seed(0)
        a = MLP([12, 10, 4], members=2, seeds=[0, 1])
        b = MLP([12, 10, 4], members=2, seeds=[0, 1])
        theirs_kw = {**kw, "fused": True} if fused and kw else kw
        ours, theirs = optim.SGD(a.parameters(), lr=0.1, **kw), torch.optim.SGD(b.parameters(), lr=0.1, **theirs_kw)
        for _ in range(4):
            x = torch.randn(2, 6, 12)
            for net, opt in ((a, ours), (b, theirs)):
                opt.zero_grad()
                net(x).square().mean().backward()
                opt.step()
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())), kw
        assert ours.kernel == (optim.FUSED_NAME if fused and kw else optim.LOOP_NAME)


def test_a_model_family_whose_parameters_are_not_stacked_by_member_is_refused_with_a_fix():
    from kdbench.engine import models

    @models.register("unstacked_for_test")
    class Unstacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        @classmethod
        def build(cls, cfg, seeds):
            return cls()

    try:
        models.build({"model": "unstacked_for_test"}, [0, 1])
    except ValueError as e:
        assert "parameter lin.weight is (3, 4), not stacked by member (2, ...). Fix:" in str(e)
    else:
        raise AssertionError("an unstacked family was built")
    assert models.family_params("mlp", {}) == {}
