"""Specialists: clusters from prediction covariance, the dustbin engine, the KL combination of eq. 5, the tables."""
import math

import pytest
import torch

from kdbench.engine import train
from kdbench.engine.models import MLP
from kdbench.sections import specialists


def test_kmeans_on_covariance_columns_finds_the_blocks():
    # 6 classes, generalists that confuse {0, 1, 2} among themselves and {3, 4} among themselves, 5 alone
    g = torch.Generator().manual_seed(0)
    groups = [[0, 1, 2], [3, 4], [5]]
    rows = []
    for i in range(3000):
        grp = groups[i % 3]
        p = torch.zeros(6)
        p[grp] = torch.rand(len(grp), generator=g) + 0.1
        rows.append(p / p.sum())
    probs = torch.stack(rows)[None]
    corr = specialists.correlation(specialists.prediction_covariance(probs))
    found = specialists.find_clusters(corr, [3], min_size=2, max_size=4, seed=0)
    assert sorted(found) == [[0, 1, 2], [3, 4]]  # the singleton is not a specialist
    assert specialists.find_clusters(corr, [3, 3], 2, 4, 0) == found  # duplicates dropped


def test_combination_reduces_to_the_generalist_when_specialists_agree():
    torch.manual_seed(0)
    log_pg = torch.log_softmax(torch.randn(20, 6), -1)
    clusters = [[1, 2], [2, 3, 4]]
    spec = [specialists.lumped_log_q(log_pg, c) for c in clusters]
    active = torch.ones(20, 2, dtype=torch.bool)
    log_q = specialists.combine(log_pg, spec, clusters, active)
    torch.testing.assert_close(log_q.exp(), log_pg.exp(), atol=1e-5, rtol=0)


def test_combination_of_full_distributions_is_their_arithmetic_mean():
    # the paper: with KL(p, q) and every model giving a full distribution, the minimizer is the arithmetic mean
    torch.manual_seed(1)
    c = 5
    p_g = torch.softmax(torch.randn(8, c), -1)
    p_s = torch.softmax(torch.randn(8, c), -1)
    cluster = list(range(c - 1))  # the dustbin holds one class only: the specialist is a full distribution
    spec = torch.log(torch.cat([p_s[:, :c - 1], p_s[:, c - 1:]], -1))
    log_q = specialists.combine(p_g.log(), [spec], [cluster], torch.ones(8, 1, dtype=torch.bool))
    torch.testing.assert_close(log_q.exp(), (p_g + p_s) / 2, atol=1e-5, rtol=0)


def test_combination_is_a_stationary_point_and_only_where_active():
    torch.manual_seed(2)
    log_pg = torch.log_softmax(2 * torch.randn(30, 7), -1)
    clusters = [[0, 1, 2], [2, 5]]
    spec = [torch.log_softmax(torch.randn(30, 4), -1), torch.log_softmax(torch.randn(30, 3), -1)]
    active = specialists.active_specialists(log_pg, clusters, top_n=1)
    log_q = specialists.combine(log_pg, spec, clusters, active)
    idle = ~active.any(1)
    assert idle.any() and (~idle).any()
    torch.testing.assert_close(log_q[idle], log_pg[idle])
    z = log_q[~idle].double().clone().requires_grad_(True)
    lq = torch.log_softmax(z, -1)
    loss = -(log_pg[~idle].double().exp() * lq).sum()
    for m, cl in enumerate(clusters):
        loss = loss - (active[~idle, m].double() * (spec[m][~idle].double().exp()
                                                    * specialists.lumped_log_q(lq, cl)).sum(-1)).sum()
    loss.backward()
    assert z.grad.abs().max() < 1e-4


def test_active_specialists_coverage_and_conditional_accuracy():
    log_pg = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.0 + 1e-9], [0.1, 0.15, 0.05, 0.7], [0.2, 0.5, 0.2, 0.1]]))
    clusters = [[0, 1], [1, 2]]
    act = specialists.active_specialists(log_pg, clusters, top_n=1)
    assert act.tolist() == [[True, False], [False, False], [True, True]]
    assert specialists.active_specialists(log_pg, clusters, top_n=2)[1].tolist() == [True, True]
    labels = torch.tensor([0, 3, 2])
    assert specialists.coverage(labels, clusters, 4).tolist() == [1, 0, 1]
    # covered classes {0, 1, 2}: case 1 (a 3) is left out; case 2 predicts 1 among {0, 1, 2}: wrong
    assert specialists.conditional_accuracy(log_pg, labels, [0, 1, 2]) == pytest.approx(50.0)


def test_specialist_starts_from_its_generalist_with_a_dustbin(tmp_path):
    gen = MLP([20, 16, 6], members=3, seeds=[0, 1, 2])
    torch.save({"model_config": gen.config(), "train_config": {}, "state_dict": gen.state_dict()},
               tmp_path / "model.pt")
    spec = MLP([20, 16, 3], members=2, seeds=[7, 8])
    train.init_from_model(spec, tmp_path / "model.pt", [2, 0], class_subset=[4, 1])
    x = torch.randn(5, 20)
    with torch.no_grad():
        zg, zs = gen(x), spec(x)
        torch.testing.assert_close(zs[0, :, :2], zg[2][:, [4, 1]])
        torch.testing.assert_close(zs[1, :, :2], zg[0][:, [4, 1]])
        # the dustbin starts as the mean of the other classes' units plus log(4)
        rest = [0, 2, 3, 5]
        torch.testing.assert_close(zs[1, :, 2], zg[0][:, rest].mean(-1) + math.log(4), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="do not match"):
        train.init_from_model(MLP([20, 8, 3]), tmp_path / "model.pt", [0], [4, 1])


def test_specialist_training_sees_half_cluster_and_corrects_its_dustbin(data_root, tmp_path):
    gen_cfg = dict(widths=[784, 32, 10], epochs=1, train_fraction=0.1, val_size=1000, dataset="fashion_mnist")
    train.train(train.resolve_spec(gen_cfg), [0], tmp_path / "gen", device="cpu", root=data_root, progress=False)
    cfg = {**gen_cfg, "widths": [784, 32, 4], "class_subset": [0, 2, 6], "subset_fraction": 0.5,
           "init_from": str(tmp_path / "gen" / "model.pt"), "init_members": [0], "lr": 0.01}
    rec = train.train(train.resolve_spec(cfg), [0], tmp_path / "spec", device="cpu", root=data_root, progress=False)[0]
    nat = rec["subset_natural_fraction"]
    assert 0.25 < nat < 0.35  # 3 of 10 balanced classes
    assert rec["dustbin_logit_shift"] == pytest.approx(math.log((1 - nat) / nat))
    # an epoch holds every cluster example of the transfer set and as many others
    assert rec["train_examples"] == 2 * round(nat * 5900)  # 10% of the 59,000 non-validation images
    blob = torch.load(tmp_path / "spec" / "logits.pt", weights_only=False)
    assert blob["test"].shape == (1, 10000, 4)
    assert set(blob["test_labels"].unique().tolist()) == {0, 1, 2, 3}  # 3 = dustbin
    assert int((blob["test_labels"] < 3).sum()) == 3000
    # validation (and so early stopping) judges the specialist with its dustbin shift applied, as it is used
    from kdbench.engine.evaluate import error_summary
    bias = torch.zeros(4)
    bias[-1] = rec["dustbin_logit_shift"]
    shifted = error_summary(blob["val"], blob["val_labels"], bias=bias)[0]["errors"]
    assert rec["val_errors"][-1] == shifted != error_summary(blob["val"], blob["val_labels"])[0]["errors"]
    with pytest.raises(ValueError, match="subset_fraction needs class_subset"):
        train.resolve({"subset_fraction": 0.5})


def test_collapse_to_subset_is_exact_at_its_temperature():
    from kdbench.engine.teachers import collapse_to_subset
    z = torch.randn(2, 7, 6) * 3
    classes, t = [4, 1], 2.5
    q = torch.softmax(z / t, -1)
    out = collapse_to_subset(z, classes, t)
    assert out.shape == (2, 7, 3)
    p = torch.softmax(out / t, -1)
    torch.testing.assert_close(p[..., :2], q[..., [4, 1]])
    torch.testing.assert_close(p[..., 2], q[..., [0, 2, 3, 5]].sum(-1))



def test_specialist_learns_from_its_generalists_soft_targets_collapsed_to_its_outputs(data_root, tmp_path):
    """Section 6.1: seed s's specialist reads generalist s's cached logits, collapsed onto its cluster and dustbin
    at the distillation temperature and shifted to its training prior."""
    from kdbench.engine import config as kconfig
    from kdbench.engine.teachers import Teacher, cache_logits, collapse_to_subset
    gen_cfg = dict(widths=[784, 32, 10], epochs=1, train_fraction=0.1, val_size=1000, dataset="fashion_mnist")
    train.train(train.resolve_spec(gen_cfg), [0, 1], tmp_path / "gen", device="cpu", root=data_root, progress=False)
    cached = cache_logits(tmp_path / "gen" / "model.pt", tmp_path / "gen" / "train_logits.pt", root=data_root)
    cfg = {**gen_cfg, "widths": [784, 32, 4], "class_subset": [0, 2, 6], "subset_fraction": 0.5,
           "init_from": str(tmp_path / "gen" / "model.pt"), "lr": 0.01, "variant": "hinton",
           "variant_params": {"temperature": 3.0, "hard_weight": 0.5},
           "teacher_logits": str(tmp_path / "gen" / "train_logits.pt"), "teacher_pairing": "paired"}
    resolved = kconfig.resolve_spec(cfg)
    data = train.load_run_data(resolved, [0, 1], data_root, torch.device("cpu"))
    shift = data.record["dustbin_logit_shift"]
    assert shift > 0.5  # the cluster (3 of 10 classes) is drawn as half of every epoch
    # the engine gets the prior's correction as a generic per-output logit offset: only the dustbin's is non-zero
    assert data.logit_offset.tolist() == pytest.approx([0.0, 0.0, 0.0, shift])
    teacher = Teacher(resolved, torch.device("cpu"), len(data.train), 2, data.logit_offset)
    collapsed = collapse_to_subset(cached, [0, 2, 6], 3.0)
    # the soft targets carry the training prior: the dustbin's lowered by the shift, nothing else touched
    torch.testing.assert_close(teacher.logits[..., :3], collapsed[..., :3])
    torch.testing.assert_close(teacher.logits[..., 3], collapsed[..., 3] - shift)
    recs = train.train(train.resolve_spec(cfg), [0, 1], tmp_path / "spec", device="cpu", root=data_root, progress=False)
    for rec in recs:
        assert {"hard", "soft"} <= set(rec["train_terms"][0]) and rec["train_terms"][0]["soft"] > 0
        assert rec["dustbin_logit_shift"] == pytest.approx(shift)


def test_clusters_see_their_own_settings_not_the_generalists_recipe_or_other_seeds(tmp_path):
    """A dataset's clusters checkpoint's params: a new generalist recipe reruns it through its input (the
    generalists' logits), so the recipe, the profile's or ensembles' seeds and the other datasets' cluster settings
    stay out; its own settings and seeds stay in."""
    cfg = {"profile": "t", "seeds": [0, 1], "ensembles": {"seeds": [0, 1, 2], "datasets": {"speech": {"epochs": 8}}},
           "specialists": {"seeds": [0, 1, 2], "generalist": {"epochs": 3}, "clusters": {"k": [3], "min_size": 2,
                           "max_size": 4, "seed": 0}, "datasets": {"speech": {"generalist": {"widths": [1040, 32, 31]},
                                                                                 "train": {"epochs": 2}},
                                                            "fashion_mnist": {"clusters": {"k": [5]}}}}}
    base = specialists.cluster_config(cfg, "speech")
    import copy
    other = copy.deepcopy(cfg)
    other["seeds"], other["ensembles"]["seeds"] = [5], [7]
    other["ensembles"]["datasets"]["speech"]["epochs"] = 20
    other["specialists"]["generalist"]["epochs"] = 9
    other["specialists"]["datasets"]["speech"]["generalist"]["widths"] = [1040, 64, 31]
    other["specialists"]["datasets"]["speech"]["train"]["epochs"] = 5
    other["specialists"]["datasets"]["fashion_mnist"]["clusters"]["k"] = [6]
    assert specialists.cluster_config(other, "speech") == base
    for change in ({"seeds": [0, 1]}, {"clusters": {"k": [4], "min_size": 2, "max_size": 4, "seed": 0}}):
        moved = copy.deepcopy(cfg)
        moved["specialists"].update(change)
        assert specialists.cluster_config(moved, "speech") != base, change
    moved = copy.deepcopy(cfg)
    moved["specialists"]["datasets"]["speech"]["clusters"] = {"k": [9]}
    assert specialists.cluster_config(moved, "speech") != base
    assert specialists.cluster_config(moved, "fashion_mnist") == specialists.cluster_config(cfg, "fashion_mnist")
    del cfg["specialists"]["seeds"]  # without its own seeds the section runs on the profile's, and sees them
    assert specialists.cluster_config(cfg, "speech")["specialists"]["seeds"] == [0, 1]
    # what the checkpoint computes from it: settings with the dataset's own on top, one generalist per seed
    assert specialists.cluster_settings(specialists.cluster_config(moved, "speech"), "speech")["k"] == [9]
    assert specialists.cluster_settings(specialists.cluster_config(cfg, "fashion_mnist"), "fashion_mnist")["k"] == [5]
    assert specialists.generalist_members(specialists.cluster_config(cfg, "speech")) == [0, 1]
