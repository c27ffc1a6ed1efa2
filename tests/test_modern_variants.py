"""Issue 37: DKD, DIST, logit standardization and NKD, each checked on cases computed by hand (in float64 with
plain math, not with the code under test), on the identities their papers state, for numerical safety at saturated
logits, and for the per-seed mapping the trainer applies."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from kdbench.engine import losses
from kdbench.engine.train import _member_loss_fn

NEW = ("dkd", "dist", "hinton_ls", "nkd")


def _softmax(z, t=1.0):
    m = max(v / t for v in z)
    e = [math.exp(v / t - m) for v in z]
    return [x / sum(e) for x in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _case(seed=0, n=6, c=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * scale, torch.randn(n, c, generator=g) * scale,
            torch.randint(0, c, (n,), generator=g))


def test_the_registry_lists_the_four_with_their_citations():
    for name in NEW:
        doc = " ".join(losses.get(name).fn.__doc__.split())
        assert re.search(r"(CVPR|NeurIPS|ICCV) 20\d\d", doc) and re.search(r"eqs?\. \d", doc), name
    assert losses.get("dkd").progress and not losses.get("hinton").progress


def test_dkd_with_beta_0_is_kd_on_the_binary_target_split():
    z, v, y = [0.5, 2.0, -1.0], [3.0, 0.2, -0.5], 1
    T = 2.0
    p, q = _softmax(v, T), _softmax(z, T)
    expected = T ** 2 * _kl([p[y], 1 - p[y]], [q[y], 1 - q[y]])
    terms = losses.get("dkd")(torch.tensor([z]), torch.tensor([y]), torch.tensor([v]), progress=1.0,
                              temperature=T, alpha=1.0, beta=0.0, ce_weight=0.0)
    assert terms["nckd"].item() == 0.0 and terms["hard"].item() == 0.0
    assert terms["tckd"].item() == pytest.approx(expected, rel=1e-5)


def test_dkd_nckd_is_kd_over_the_renormalized_non_targets():
    z, v, y = [0.5, 2.0, -1.0, 1.0], [3.0, 0.2, -0.5, 1.5], 1
    T = 4.0
    p, q = _softmax(v, T), _softmax(z, T)
    pn = [a / (1 - p[y]) for i, a in enumerate(p) if i != y]
    qn = [a / (1 - q[y]) for i, a in enumerate(q) if i != y]
    terms = losses.get("dkd")(torch.tensor([z]), torch.tensor([y]), torch.tensor([v]), progress=1.0,
                              temperature=T, alpha=0.0, beta=8.0)
    assert terms["nckd"].item() == pytest.approx(8.0 * T ** 2 * _kl(pn, qn), rel=1e-5)


def test_dkd_reformulates_kd_as_tckd_plus_weighted_nckd():
    """Zhao et al. eq. 7: KD = TCKD + (1 - p_t) NCKD, example by example."""
    z, v, y = _case()
    T = 4.0
    for i in range(len(y)):
        d = losses.get("dkd")(z[i:i + 1], y[i:i + 1], v[i:i + 1], progress=1.0, temperature=T, alpha=1.0,
                              beta=1.0, ce_weight=0.0)
        kd = T ** 2 * losses.soft_kl(z[i:i + 1], v[i:i + 1], T)
        p_t = F.softmax(v[i] / T, -1)[y[i]]
        assert (d["tckd"] + (1 - p_t) * d["nckd"]).item() == pytest.approx(kd.item(), rel=1e-4)


def test_dkd_ramps_its_kd_terms_over_the_warmup():
    z, v, y = _case()
    full = losses.get("dkd")(z, y, v, progress=1.0)
    half = losses.get("dkd")(z, y, v, progress=losses.get("dkd").defaults["warmup"] / 2)
    assert half["tckd"].item() == pytest.approx(full["tckd"].item() / 2, rel=1e-6)
    assert half["nckd"].item() == pytest.approx(full["nckd"].item() / 2, rel=1e-6)
    assert half["hard"].item() == full["hard"].item()
    with pytest.raises(ValueError, match="progress"):
        losses.get("dkd")(z, y, v)


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (w - mb) for x, w in zip(a, b))
    return num / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((w - mb) ** 2 for w in b))


def test_dist_on_a_hand_computed_batch():
    zs = [[1.0, 0.0, -1.0], [0.3, 0.9, 0.1], [-0.4, 0.2, 1.1]]
    zt = [[2.0, 0.5, -0.5], [0.0, 1.5, 0.2], [0.3, -0.2, 0.9]]
    tau = 2.0
    ys, yt = [_softmax(r, tau) for r in zs], [_softmax(r, tau) for r in zt]
    inter = sum(1 - _pearson(a, b) for a, b in zip(ys, yt)) / 3
    intra = sum(1 - _pearson([r[j] for r in ys], [r[j] for r in yt]) for j in range(3)) / 3
    assert intra > 0.01  # a batch of three: the intra-class correlations are not all +-1
    terms = losses.get("dist")(torch.tensor(zs), torch.tensor([0, 1, 2]), torch.tensor(zt), tau=tau, beta=1.0,
                               gamma=2.0, ce_weight=0.0)
    assert terms["inter"].item() == pytest.approx(tau ** 2 * inter, rel=1e-4)
    assert terms["intra"].item() == pytest.approx(2.0 * tau ** 2 * intra, rel=1e-4)


def test_dist_is_zero_when_student_and_teacher_agree():
    z, _, y = _case()
    terms = losses.get("dist")(z, y, z.clone())
    assert abs(terms["inter"].item()) < 1e-5 and abs(terms["intra"].item()) < 1e-5


def test_hinton_ls_is_kd_on_z_scored_logits():
    z, v, y = [0.5, 2.0, -1.0, 1.0], [3.0, 0.2, -0.5, 1.5], 2
    T = 2.0

    def zscore(r):
        m = sum(r) / len(r)
        sd = math.sqrt(sum((x - m) ** 2 for x in r) / (len(r) - 1))
        return [(x - m) / (1e-7 + sd) for x in r]
    expected = 9.0 * T ** 2 * _kl(_softmax(zscore(v), T), _softmax(zscore(z), T))
    terms = losses.get("hinton_ls")(torch.tensor([z]), torch.tensor([y]), torch.tensor([v]))
    assert terms["soft"].item() == pytest.approx(expected, rel=1e-5)
    ce = -math.log(_softmax(z)[y])
    assert terms["hard"].item() == pytest.approx(0.1 * ce, rel=1e-5)
    # the student's logit scale and shift do not matter (the point of the method)
    again = losses.get("hinton_ls")(3.0 * torch.tensor([z]) + 7.0, torch.tensor([y]), torch.tensor([v]))
    assert again["soft"].item() == pytest.approx(terms["soft"].item(), rel=1e-4)


def test_nkd_on_a_hand_computed_example():
    z, v, y = [0.5, 2.0, -1.0, 1.0], [3.0, 0.2, -0.5, 1.5], 0
    T, gamma = 2.0, 1.5
    p1, q1 = _softmax(v), _softmax(z)
    target = -p1[y] * math.log(q1[y])
    pT, qT = _softmax(v, T), _softmax(z, T)
    pn = [a / (1 - pT[y]) for i, a in enumerate(pT) if i != y]
    qn = [a / (1 - qT[y]) for i, a in enumerate(qT) if i != y]
    non_target = -gamma * T ** 2 * sum(a * math.log(b) for a, b in zip(pn, qn))
    terms = losses.get("nkd")(torch.tensor([z]), torch.tensor([y]), torch.tensor([v]), temperature=T, gamma=gamma)
    assert terms["target"].item() == pytest.approx(target, rel=1e-5)
    assert terms["non_target"].item() == pytest.approx(non_target, rel=1e-5)
    assert terms["hard"].item() == pytest.approx(-math.log(q1[y]), rel=1e-5)


def _extreme_logits(c=10):
    """Saturated, constant and mixed logit rows in [-50, 50]."""
    g = torch.Generator().manual_seed(3)
    rows = [torch.full((c,), -50.0), torch.full((c,), 50.0), torch.zeros(c),
            torch.tensor([50.0] + [-50.0] * (c - 1)), torch.tensor([-50.0] + [50.0] * (c - 1)),
            torch.rand(c, generator=g) * 100 - 50, torch.sign(torch.randn(c, generator=g)) * 50]
    return torch.stack(rows)


@pytest.mark.parametrize("name", [*NEW, "hinton", "logit_matching", "soft_only"])
@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_no_nan_or_inf_in_loss_or_gradient_at_saturated_logits(name, temperature):
    student = _extreme_logits()
    teacher = _extreme_logits().flip(0)
    labels = torch.arange(len(student)) % student.shape[1]
    variant = losses.get(name)
    key = "tau" if "tau" in variant.defaults else "temperature"
    params = {key: temperature} if key in variant.defaults else {}
    for s, t in ((student, teacher), (teacher, student), (student, student)):
        s = s.clone().requires_grad_(True)
        terms = variant(s, labels, t, progress=1.0, **params)
        total = sum(terms.values())
        (grad,) = torch.autograd.grad(total, s)
        assert torch.isfinite(total) and torch.isfinite(grad).all(), (name, {k: v.item() for k, v in terms.items()})


@pytest.mark.parametrize("name", NEW)
def test_the_per_seed_mapping_is_a_loop_over_seeds(name):
    """The trainer maps a variant over the K members of a batched model: DIST's batch-coupled intra-class term and
    the other losses see one member's batch at a time, exactly as a loop over members would."""
    k, n, c = 3, 8, 5
    g = torch.Generator().manual_seed(11)
    s, t = torch.randn(k, n, c, generator=g) * 4, torch.randn(k, n, c, generator=g) * 4
    y = torch.randint(0, c, (k, n), generator=g)
    fn = _member_loss_fn(losses.get(name), {}, has_teacher=True, ensemble_teacher=False)
    mapped = fn(s, y, t, None, 0.5)
    for m in range(k):
        one = losses.get(name)(s[m], y[m], t[m], progress=0.5)
        for term, value in one.items():
            assert mapped[term][m].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), (name, term, m)


def test_the_trainer_gives_a_ramping_variant_the_fraction_of_training_done(mnist_root, tmp_path):
    """A variant that declares `progress` sees (epoch + 1) / epochs in every step of an epoch (logged here as a
    constant term); one that does not is called as before."""
    from kdbench.engine import train

    @losses.register("test_progress_probe", needs_teacher=False, progress=True)
    def probe(student_logits, labels, teacher_logits, *, progress):
        return {"hard": losses.hard_ce(student_logits, labels), "seen": student_logits.new_tensor(progress)}

    cfg = dict(widths=[784, 16, 10], epochs=2, train_fraction=0.02, val_size=200, lr=0.05, batch_size=100,
               variant="test_progress_probe", variant_params={})
    recs = train.train(train.resolve_spec(cfg), [0], tmp_path / "probe", device="cpu", root=mnist_root, progress=False)
    assert [t["seen"] for t in recs[0]["train_terms"]] == pytest.approx([0.5, 1.0])
    z, v, y = _case()
    fn = _member_loss_fn(losses.get("hinton"), {}, has_teacher=True, ensemble_teacher=False)
    a, b = fn(z[None], y[None], v[None], None, 0.3), fn(z[None], y[None], v[None], None, None)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_verdict_is_decided_by_the_paired_interval_in_the_metrics_better_direction():
    """Fewer errors, more accuracy: an interval below 0 beats hinton in errors and loses in accuracy; one across 0,
    or none (one seed), ties."""
    import pandas as pd

    from kdbench.sections import variants

    def row(variant, metric, low, high):
        return {"experiment": "e" + metric, "table": "t", "variant": variant, "metric": metric, "mean": 0.0,
                "diff_vs_hinton_mean": (low + high) / 2, "diff_ci95_low": low, "diff_ci95_high": high}
    df = pd.DataFrame([row("hinton", "test_errors", 0, 0), row("hinton", "test_accuracy_pct", 0, 0),
                       row("a", "test_errors", -3.0, -1.0), row("a", "test_accuracy_pct", -3.0, -1.0),
                       row("b", "test_errors", -1.0, 2.0), row("b", "test_accuracy_pct", -0.5, 1.5)])
    assert [variants.outcome(r) for _, r in df.iloc[2:].iterrows()] == ["beats", "loses", "ties", "ties"]
    assert variants.outcome(row("c", "test_errors", float("nan"), float("nan"))) == "ties"  # one seed: no interval
    board = variants.leaderboard(df).set_index("variant")
    assert board.loc["a"].to_dict() == {"experiments": 2, "beats": 1, "ties": 0, "loses": 1}
    assert board.loc["b"].to_dict() == {"experiments": 2, "beats": 0, "ties": 2, "loses": 0}
    text = "\n".join(variants.leaderboard_markdown(df))
    assert "| etest_errors | `a` -2.0 [-3.0, -1.0] beats | `b` +0.5 [-1.0, +2.0] ties |" in text, text
    assert "| etest_accuracy_pct | `b` +0.50 [-0.50, +1.50] ties | `a` -2.00 [-3.00, -1.00] loses |" in text, text
    assert "- `a`: beats `hinton` in 1 of 2 experiments, ties in 0, loses in 1" in text, text


def test_the_committed_leaderboard_is_recomputed_from_variants_csv():
    """Issue 37 item 5: variants.md's leaderboard and verdict lines are what `variants.csv` gives (the rule above);
    hinton_geometric equals hinton to the digit with one teacher net, so it ties everywhere."""
    from pathlib import Path

    import pandas as pd

    from kdbench.sections import variants
    quick = Path(__file__).resolve().parents[1] / "results" / "quick"
    df = pd.read_csv(quick / "variants.csv")
    board = variants.leaderboard(df).set_index("variant")
    geometric = board.loc["hinton_geometric"]
    assert geometric["ties"] == geometric["experiments"] == df.experiment.nunique()
    assert "hinton" not in board.index
    text = (quick / "variants.md").read_text()
    for line in variants.verdict_lines(df):
        assert f"- {line}" in text, line


def test_the_readme_states_each_variants_verdict_as_variants_csv_gives_it():
    """Issue 37 item 5: the README's results section gets each variant's verdict line, the very lines `verdict_lines`
    computes from the committed variants.csv, all of them and nothing else."""
    import re
    from pathlib import Path

    import pandas as pd

    from kdbench.sections import variants
    repo = Path(__file__).resolve().parents[1]
    block = re.search(r"<!-- verdicts.*?-->(.*?)<!-- /verdicts -->", (repo / "README.md").read_text(), re.S)
    assert block, "README: no <!-- verdicts --> block"
    stated = [line[2:] for line in block.group(1).splitlines() if line.startswith("- ")]
    assert stated == variants.verdict_lines(pd.read_csv(repo / "results" / "quick" / "variants.csv"))
