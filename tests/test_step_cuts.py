"""Issue 36: the training step's cuts change no bit. Each cut path is compared with the code it replaced (written out
here as the reference) with `torch.equal`, on cases that take both its shortcut and its exact path."""
import pytest
import torch

from kdbench.data import datasets as data
from kdbench.engine import optim, train
from kdbench.engine.models import MLP


def old_jitter(x, max_shift, generator):
    """The jitter before issue 36: indexing the padded images with three broadcast index tensors."""
    *lead, h, w = x.shape
    flat = x.reshape(-1, h, w)
    n = flat.shape[0]
    padded = torch.nn.functional.pad(flat, (max_shift,) * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = shifts[0, :, None] + torch.arange(h)
    cols = shifts[1, :, None] + torch.arange(w)
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]].reshape(*lead, h, w)


@pytest.mark.parametrize("shape, shift", [((64, 28, 28), 2), ((3, 5, 28, 28), 1), ((7, 9, 11), 3)])
def test_jitter_gives_the_old_indexings_pixels(shape, shift):
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = data.jitter(x, shift, generator=torch.Generator().manual_seed(5))
    want = old_jitter(x, shift, torch.Generator().manual_seed(5))
    assert torch.equal(got, want)


@torch.no_grad()
def old_max_norm(model):
    """apply_max_norm before issue 36: the exact unit norms on every call."""
    for w in list(model.weights)[:-1]:
        norms = w.norm(dim=1, keepdim=True)
        scale = torch.clamp(model.max_norm / (norms + 1e-12), max=1.0)
        if bool((scale < 1.0).any()):
            w.mul_(scale)


@pytest.mark.parametrize("fused, decay", [(False, 0.0), (True, 0.0), (False, 1e-5), (True, 1e-5)])
def test_max_norm_with_its_bound_gives_the_exact_paths_weights_step_by_step(fused, decay, monkeypatch):
    """Two 2-member teachers from the same seeds, one with the bound-skipping apply_max_norm, one with the exact
    reference, trained by kdbench's SGD on the same batches with a learning rate that drives units onto the bound
    midway: the same bits after every step, after the loop's steps and after the fused kernel's (whose update lengths
    are bounds); the bound skipped the norms on some steps and units were rescaled on others, so both paths ran. With
    weight decay the fused kernel reports no lengths (Nesterov's bound would need the weights' norms): never skipped."""
    monkeypatch.setattr(optim, "FUSED", fused)
    torch.manual_seed(0)
    fast, ref = (MLP([20, 16, 16, 3], members=2, seeds=[0, 1], max_norm=0.7) for _ in range(2))
    opts = [optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=decay) for m in (fast, ref)]
    skipped = rescaled = 0
    rules_out = fast._bound_rules_out

    def counting(layer, w):
        nonlocal skipped
        out = rules_out(layer, w)
        skipped += out
        return out
    fast._bound_rules_out = counting
    g = torch.Generator().manual_seed(1)
    for step in range(150):
        x, y = torch.randn(2, 32, 20, generator=g), torch.randint(0, 3, (2, 32), generator=g)
        for m, opt in zip((fast, ref), opts):
            loss = torch.nn.functional.cross_entropy(m(x).flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        before = [w.clone() for w in ref.weights]
        fast.apply_max_norm()
        old_max_norm(ref)
        rescaled += any(not torch.equal(a, b) for a, b in zip(before, ref.weights))
        assert all(torch.equal(a, b) for a, b in zip(fast.parameters(), ref.parameters())), step
    assert (skipped == 0 if fused and decay else skipped > 20) and rescaled > 20, (skipped, rescaled)


def test_a_weight_changed_outside_the_optimizer_sends_max_norm_down_the_exact_path():
    m = MLP([20, 16, 3], max_norm=1.0)
    opt = optim.SGD(m.parameters(), lr=0.01)
    for _ in range(2):
        m(torch.randn(8, 20)).sum().backward()
        opt.step()
        opt.zero_grad()
        m.apply_max_norm()
    with torch.no_grad():
        m.weights[0].mul_(10)  # a load or a copy: not an update the optimizer reported
    m.apply_max_norm()
    assert m.weights[0].norm(dim=1).max() <= 1.0 + 1e-5


def old_clip(params, max_norm):
    sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)
    scale = torch.clamp(max_norm / (sq.sqrt() + 1e-6), max=1.0)
    for p in params:
        p.grad.mul_(scale.view(-1, *([1] * (p.grad.dim() - 1))))


@pytest.mark.parametrize("norm", [0.5, 0.9995, 1.0, 1.0005, 3.0])
def test_gradient_clipping_with_its_cheap_check_gives_the_old_bits(norm):
    """Member gradients scaled to norm * max_norm (under, within 0.1%, at and over the bound; the members differ):
    the clipped gradients equal the old code's bit for bit."""
    g = torch.Generator().manual_seed(2)
    shapes = [(3, 40, 30), (3, 30), (3, 30, 5)]
    grads = [torch.randn(s, generator=g) for s in shapes]
    total = sum(t.pow(2).flatten(1).sum(1) for t in grads).sqrt()
    target = torch.tensor([norm, 0.5, norm * 1.0001]) * 5.0
    grads = [t * (target / total).view(-1, *([1] * (t.dim() - 1))) for t in grads]
    ours, ref = ([torch.nn.Parameter(torch.zeros(s)) for s in shapes] for _ in range(2))
    for a, b, t in zip(ours, ref, grads):
        a.grad, b.grad = t.clone(), t.clone()
    train._clip_per_member(ours, 5.0)
    old_clip(ref, 5.0)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, ref))
