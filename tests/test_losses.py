"""The loss math of Hinton, Vinyals & Dean (2015), checked with autograd."""
import pytest
import torch
import torch.nn.functional as F

from kdbench.engine import losses
from kdbench.engine.losses import distillation_loss


def _logits(n=16, c=10, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(n, c, generator=g) * scale, torch.randn(n, c, generator=g) * scale
    return student, teacher, torch.randint(0, c, (n,), generator=g)


def test_softmax_with_temperature_matches_the_paper_example():
    z = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(F.softmax(z / 1, -1), torch.tensor([0.090, 0.245, 0.665]), atol=2e-3)
    assert torch.allclose(F.softmax(z / 5, -1), torch.tensor([0.270, 0.329, 0.402]), atol=2e-3)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0, 20.0])
@pytest.mark.parametrize("hard_weight", [0.0, 0.3])
def test_soft_gradient_is_T_times_q_minus_p_over_N(temperature, hard_weight):
    z, v, y = _logits()
    z.requires_grad_(True)
    loss = distillation_loss(z, v, y, temperature, hard_weight)
    (grad,) = torch.autograd.grad(loss, z)
    q, p = F.softmax(z.detach() / temperature, -1), F.softmax(v / temperature, -1)
    n = z.shape[0]
    hard_grad = (F.softmax(z.detach(), -1) - F.one_hot(y, 10)) / n
    expected = (1 - hard_weight) * temperature * (q - p) / n + hard_weight * hard_grad
    assert torch.allclose(grad, expected, atol=1e-6)


def test_loss_value_is_the_documented_formula():
    z, v, y = _logits()
    T, w = 4.0, 0.2
    p, log_q = F.softmax(v / T, -1), F.log_softmax(z / T, -1)
    kl = (p * (p.log() - log_q)).sum(-1).mean()
    expected = w * F.cross_entropy(z, y) + (1 - w) * T**2 * kl
    assert torch.allclose(distillation_loss(z, v, y, T, w), expected, atol=1e-6)


def _soft_grad_norm(T, scaled=True):
    z, v, y = _logits(n=256, scale=2.0, seed=1)
    z.requires_grad_(True)
    kl = losses.soft_kl(z, v, T)
    (g,) = torch.autograd.grad(kl * (T**2 if scaled else 1.0), z)
    return g.norm().item()


def test_T_squared_keeps_the_soft_gradient_size_roughly_constant():
    temps = [2.0, 5.0, 10.0, 20.0, 50.0]
    scaled = [_soft_grad_norm(T) for T in temps]
    unscaled = [_soft_grad_norm(T, scaled=False) for T in temps]
    assert max(scaled) / min(scaled) < 2.0
    assert max(unscaled) / min(unscaled) > 100.0  # the 1/T**2 decay the factor undoes


@pytest.mark.parametrize("temperature", [50.0, 200.0])
def test_high_temperature_limit_is_logit_matching(temperature):
    z, v, _ = _logits(n=8, scale=1.0, seed=2)
    z = z - z.mean(-1, keepdim=True)
    v = v - v.mean(-1, keepdim=True)
    z.requires_grad_(True)
    c = z.shape[-1]
    # per-example gradient of the soft cross-entropy before the T**2 factor: (1/T)(q - p) ~ (z - v) / (C T**2)
    (g,) = torch.autograd.grad(losses.soft_kl(z, v, temperature) * z.shape[0], z)
    limit = (z.detach() - v) / (c * temperature**2)
    rel = (g - limit).norm() / limit.norm()
    assert rel < 2.0 / temperature  # the error of the first-order expansion shrinks like 1/T
    # and with the T**2 factor, hinton's soft term and logit_matching give the same gradient
    (g_lm,) = torch.autograd.grad(losses.get("logit_matching")(z, None, v)["logit"], z)
    (g_soft,) = torch.autograd.grad(losses.get("soft_only")(z, None, v, temperature=temperature)["soft"], z)
    assert (g_soft - g_lm).norm() / g_lm.norm() < 2.0 / temperature


def test_ensemble_means():
    z, _, y = _logits(n=4)
    members = torch.randn(3, 4, 10)
    T = 2.0
    probs = F.softmax(members / T, -1)
    arith = losses.teacher_log_probs(members, z, T, "arithmetic").exp()
    assert torch.allclose(arith, probs.mean(0), atol=1e-6)
    geo = losses.teacher_log_probs(list(members), z, T, "geometric").exp()
    g = probs.log().mean(0).exp()
    assert torch.allclose(geo, g / g.sum(-1, keepdim=True), atol=1e-6)
    # one member stacked is the same as that member alone
    assert torch.allclose(distillation_loss(z, members[:1], y, T, 0.1), distillation_loss(z, members[0], y, T, 0.1))
    with pytest.raises(ValueError, match="ensemble"):
        distillation_loss(z, members, y, T, 0.1, ensemble="median")


def test_registry_variants_return_named_terms_and_reject_bad_params():
    z, v, y = _logits()
    assert set(losses.get("hard")(z, y)) == {"hard"}
    assert set(losses.get("hinton")(z, y, v)) == {"hard", "soft"}
    assert set(losses.get("soft_only")(z, y, v)) == {"soft"}
    assert set(losses.get("logit_matching")(z, y, v)) == {"logit"}
    assert torch.allclose(losses.get("hard")(z, y)["hard"], F.cross_entropy(z, y))
    with pytest.raises(ValueError, match="no parameter"):
        losses.get("hinton")(z, y, v, temprature=3.0)
    with pytest.raises(ValueError, match="needs teacher"):
        losses.get("hinton")(z, y)
    with pytest.raises(KeyError, match="unknown KD variant"):
        losses.get("nope")


def test_register_a_new_variant():
    @losses.register("test_half_ce", needs_teacher=False, weight=0.5)
    def half_ce(s, y, t, weight):
        return {"ce": weight * F.cross_entropy(s, y)}

    z, _, y = _logits()
    assert torch.allclose(losses.get("test_half_ce")(z, y)["ce"], 0.5 * F.cross_entropy(z, y))
    with pytest.raises(ValueError, match="already registered"):
        losses.register("test_half_ce")(lambda s, y, t: {})


def test_fitnets_adds_a_hint_that_trains_its_own_regressor_and_the_student_features():
    torch.manual_seed(0)
    s, t = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    hs, ht = torch.randn(6, 5, requires_grad=True), torch.randn(6, 7)
    v = losses.get("fitnets")
    own = v.own_parameters(5, 7, seeds=[0])
    assert own["regressor"].shape == (1, 5, 7)
    reg = own["regressor"][0].clone().requires_grad_(True)
    terms = v(s, y, t, features={"student": hs, "teacher": ht, "regressor": reg}, hint_weight=2.0, temperature=3.0)
    assert set(terms) == {"hard", "soft", "hint"}
    torch.testing.assert_close(terms["hint"], 2.0 * 0.5 * (hs @ reg - ht).pow(2).mean())
    plain = losses.get("hinton")(s, y, t, temperature=3.0, hard_weight=0.1)
    torch.testing.assert_close(terms["soft"], plain["soft"])
    sum(terms.values()).backward()
    assert reg.grad is not None and reg.grad.abs().sum() > 0 and hs.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="features"):
        v(s, y, t)


def test_a_feature_variant_needs_the_experiments_teacher():
    with pytest.raises(ValueError, match="features"):
        losses.register("bad_hint", features=True, teacher="self")(lambda *a, **k: {})
