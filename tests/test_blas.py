"""Issue 36's candidate path: the MLP's products through numpy's BLAS give torch's values and gradients."""
import pytest
import torch

from kdbench.engine import blas, models


@pytest.mark.parametrize("k, b, i, o", [(1, 128, 784, 120), (3, 16, 40, 10), (5, 7, 12, 1)])
def test_numpy_baddbmm_equals_torch_in_value_and_gradient(k, b, i, o):
    g = torch.Generator().manual_seed(0)
    x, w, bias = (torch.randn(k, b, i, generator=g), torch.randn(k, i, o, generator=g) / i ** 0.5,
                  torch.randn(k, 1, o, generator=g))
    ours = [t.clone().requires_grad_(True) for t in (bias, x, w)]
    ref = [t.clone().requires_grad_(True) for t in (bias, x, w)]
    out, want = blas.numpy_baddbmm(*ours), torch.baddbmm(*ref)
    assert torch.allclose(out, want, atol=1e-4, rtol=1e-5)
    up = torch.randn(k, b, o, generator=g)
    (out * up).sum().backward()
    (want * up).sum().backward()
    for a, r in zip(ours, ref):
        assert torch.allclose(a.grad, r.grad, atol=1e-4, rtol=1e-4)


def test_the_mlp_trains_the_same_through_either_path(monkeypatch):
    """One SGD step of a 2-member MLP with dropout off: the numpy path gives torch's loss and weights to fp32
    rounding; the switch defaults to torch's path."""
    assert models.MATMUL == "torch"

    def step():
        net = models.MLP([20, 16, 16, 4], members=2, seeds=[0, 1])
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        x = torch.randn(2, 8, 20, generator=torch.Generator().manual_seed(1))
        loss = net(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item(), [p.detach().clone() for p in net.parameters()]
    loss_torch, params_torch = step()
    monkeypatch.setattr(models, "MATMUL", "numpy")
    loss_numpy, params_numpy = step()
    assert loss_numpy == pytest.approx(loss_torch, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(params_numpy, params_torch))


@pytest.mark.parametrize("path", ["torch", "numpy"])
def test_an_epoch_on_each_path_gives_the_same_losses_and_the_record_names_the_path(path, mnist_root, tmp_path,
                                                                                   monkeypatch):
    """Issue 36: one epoch of a 2-seed MLP with dropout through each matrix-product path: the same per-seed training
    loss as torch's path to fp32 rounding, and `metrics.json` says which path trained it."""
    from kdbench.engine import train
    cfg = dict(widths=[784, 48, 48, 10], epochs=1, train_fraction=0.05, val_size=500, lr=0.05, batch_size=100,
               dropout_hidden=0.2)

    def run(which, out):
        monkeypatch.setattr(models, "MATMUL", which)
        return train.train(train.resolve_spec(cfg), [0, 1], out, device="cpu", root=mnist_root, progress=False)

    ref, got = run("torch", tmp_path / "torch"), run(path, tmp_path / path)
    for a, b in zip(ref, got):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert abs(b["val_errors"][-1] - a["val_errors"][-1]) <= 2
    assert got[0]["matmul"] == (f"numpy ({blas.numpy_library()})" if path == "numpy"
                                else f"torch ({blas.torch_library()})")
    assert "unknown" not in got[0]["matmul"]


@pytest.mark.parametrize("fused", [True, False])
def test_an_epoch_with_each_optimizer_kernel_gives_the_same_losses_and_the_record_names_it(fused, mnist_root, tmp_path,
                                                                                           monkeypatch):
    """Issue 36: one epoch of a 2-seed MLP with dropout and max-norm through each SGD kernel (torch's fused one, the
    loop): the same per-seed training loss to fp32 rounding, and `metrics.json` says which kernel made the steps."""
    from kdbench.engine import optim, train
    cfg = dict(widths=[784, 48, 48, 10], epochs=1, train_fraction=0.05, val_size=500, lr=0.05, batch_size=100,
               dropout_hidden=0.2, max_norm=0.5)

    def run(on, out):
        monkeypatch.setattr(optim, "FUSED", on)
        return train.train(train.resolve_spec(cfg), [0, 1], out, device="cpu", root=mnist_root, progress=False)

    ref, got = run(False, tmp_path / "loop"), run(fused, tmp_path / str(fused))
    for a, b in zip(ref, got):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert abs(b["val_errors"][-1] - a["val_errors"][-1]) <= 2
    assert ref[0]["optimizer"] == optim.LOOP_NAME
    assert got[0]["optimizer"] == (optim.FUSED_NAME if fused else optim.LOOP_NAME)
