"""The training engine: deterministic, resumable, stops on NaN, records every run, reads cached teacher logits."""
import dataclasses
import json
import time

import pytest
import torch

from kdbench.engine import train
from kdbench.spec import DataSpec, TrainSpec

SMALL = dict(widths=[784, 48, 10], epochs=2, train_fraction=0.08, val_size=1000, lr=0.05, batch_size=100)


def _run(cfg, seeds, out, mnist_root, **kw):
    return train.train(train.resolve_spec(cfg), seeds, out, device="cpu", root=mnist_root, progress=False, **kw)


def test_same_seed_same_numbers_and_a_useful_record(mnist_root, tmp_path):
    a = _run(SMALL, [0, 1], tmp_path / "a", mnist_root)
    b = _run(SMALL, [0, 1], tmp_path / "b", mnist_root)
    for ra, rb in zip(a, b):
        assert ra["train_loss"] == rb["train_loss"] and ra["val_errors"] == rb["val_errors"]
        assert ra["test_errors"] == rb["test_errors"]
    assert a[0]["train_loss"] != a[1]["train_loss"]  # members really differ
    rec = json.loads((tmp_path / "a" / "seed1" / "metrics.json").read_text())
    for key in ("config", "config_hash", "seed", "git_commit", "versions", "device", "wall_seconds", "epochs",
                "train_loss", "val_errors", "test_errors", "test_accuracy", "test_per_class_errors"):
        assert key in rec, key
    assert rec["seed"] == 1 and len(rec["train_loss"]) == 2 and len(rec["val_errors"]) == 2
    assert sum(rec["test_per_class_errors"]) == rec["test_errors"]
    assert rec["test_errors"] < 1500  # a 48-unit net on 4,000 images learned something (chance: 9,000)
    assert rec["train_loss"][1] < rec["train_loss"][0]
    assert not (tmp_path / "a" / "checkpoint.pt").exists()


def test_one_member_alone_equals_that_member_in_a_batch(mnist_root, tmp_path):
    together = _run(SMALL, [0, 1], tmp_path / "t", mnist_root)
    alone = _run(SMALL, [1], tmp_path / "s", mnist_root)
    assert together[1]["val_errors"] == alone[0]["val_errors"]
    assert together[1]["train_loss"] == pytest.approx(alone[0]["train_loss"], rel=1e-4)


def test_interrupted_run_resumes_to_the_same_result(mnist_root, tmp_path):
    cfg = {**SMALL, "dropout_hidden": 0.3, "jitter": 2, "epochs": 3}
    straight = _run(cfg, [5], tmp_path / "straight", mnist_root)

    def interrupt(epoch, history):
        if epoch == 0:
            time.sleep(1.5)  # the interrupted process's time, which the record must still count
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(cfg, [5], tmp_path / "resumed", mnist_root, on_epoch_end=interrupt)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    assert not (tmp_path / "resumed" / "seed5" / "metrics.json").exists()
    resumed = _run(cfg, [5], tmp_path / "resumed", mnist_root)
    assert resumed[0]["train_loss"] == straight[0]["train_loss"]
    assert resumed[0]["test_errors"] == straight[0]["test_errors"]
    # wall_seconds covers both processes, not only the part after the resume
    assert resumed[0]["resumed_after_epoch"] == 2 and straight[0]["resumed_after_epoch"] == 0
    assert resumed[0]["wall_seconds"] >= 1.5 + sum(resumed[0]["epoch_seconds"][2:])


def test_a_checkpoint_made_on_other_data_is_not_resumed(mnist_root, tmp_path, capsys):
    cfg = {**SMALL, "epochs": 2}

    def interrupt(epoch, history):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(cfg, [5], tmp_path / "r", mnist_root, on_epoch_end=interrupt)
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    ck["data"] = "speech-v1-older-features"
    ck["history"]["train_loss"] = [[123.0]]  # would show up if this checkpoint were resumed
    torch.save(ck, tmp_path / "r" / "checkpoint.pt")
    rec = _run(cfg, [5], tmp_path / "r", mnist_root)[0]
    assert "starting over" in capsys.readouterr().out
    assert len(rec["train_loss"]) == 2 and rec["train_loss"][0] != 123.0


def test_nan_loss_stops_the_run_and_names_it(mnist_root, tmp_path):
    cfg = {**SMALL, "lr": 1e6, "check_every": 5}
    with pytest.raises(train.NonFiniteLossError, match=r"run mnist/exploding: loss term 'hard' became (nan|inf)"):
        train.train(train.resolve_spec(cfg), [0], tmp_path / "x", device="cpu", root=mnist_root, progress=False,
                    name="mnist/exploding")
    assert not (tmp_path / "x" / "seed0" / "metrics.json").exists()


def test_no_validation_split_trains_on_everything(mnist_root, tmp_path):
    rec = _run({**SMALL, "val_size": 0, "epochs": 1}, [0], tmp_path / "all", mnist_root)[0]
    assert rec["val_examples"] == 0 and rec["val_errors"] == [None]
    assert rec["train_examples"] == round(0.08 * 60000)


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match="unknown training config key.*'epoch'"):
        train.resolve({"epoch": 3})


def test_student_learns_from_cached_teacher_logits(mnist_root, tmp_path):
    _run({**SMALL, "widths": [784, 128, 10], "epochs": 3}, [0, 1], tmp_path / "teacher", mnist_root)
    logits = train.teacher_logits(tmp_path / "teacher" / "model.pt", tmp_path / "tl.pt", root=mnist_root,
                                  device="cpu")
    assert logits.shape == (2, 60000, 10)
    # the cached logits are the teacher's own predictions: same test-free check on the validation split
    saved = torch.load(tmp_path / "teacher" / "logits.pt")
    assert torch.allclose(logits[:, saved["val_idx"]], saved["val"], atol=1e-4)
    student_cfg = {**SMALL, "variant": "hinton", "teacher_logits": str(tmp_path / "tl.pt"),
                   "variant_params": {"temperature": 4.0, "hard_weight": 0.0}, "teacher_pairing": "paired"}
    stu = _run(student_cfg, [0, 1], tmp_path / "student", mnist_root)
    assert set(stu[0]["train_terms"][0]) == {"hard", "soft"}
    assert stu[0]["train_terms"][-1]["hard"] == 0.0
    # soft targets alone (no labels) teach the classes: far better than chance
    assert all(r["test_errors"] < 2000 for r in stu)
    ens = _run({**student_cfg, "teacher_pairing": "ensemble"}, [3], tmp_path / "ens", mnist_root)
    assert ens[0]["test_errors"] < 2000
    with pytest.raises(ValueError, match="paired teacher needs one teacher member per seed"):
        _run(student_cfg, [0, 1, 2], tmp_path / "bad", mnist_root)
    with pytest.raises(ValueError, match="needs teacher logits"):
        _run({**SMALL, "variant": "hinton"}, [0], tmp_path / "bad2", mnist_root)


def test_transfer_set_without_a_class(mnist_root, tmp_path):
    cfg = {**SMALL, "transfer_classes": [0, 1, 2, 4, 5, 6, 7, 8, 9]}
    rec = _run(cfg, [0], tmp_path / "no3", mnist_root)[0]
    assert rec["test_per_class_errors"][3] == rec["test_per_class_counts"][3]  # never saw a 3, never predicts one
    labels = torch.tensor([0, 3, 3, 5, 1] * 20)
    tr, val = train.training_indices(DataSpec(val_size=10, transfer_classes=[0, 1, 5]), labels)
    assert not set(tr.tolist()) & set(val.tolist()) and 3 not in labels[tr].tolist()


def test_keep_best_ends_each_member_at_its_best_validation_epoch(mnist_root, tmp_path):
    cfg = {**SMALL, "epochs": 4, "lr": 0.4, "schedule": "constant", "keep_best": True}
    recs = _run(cfg, [0, 1, 2], tmp_path / "b", mnist_root)
    blob = torch.load(tmp_path / "b" / "logits.pt", weights_only=False)
    final_val_errors = (blob["val"].argmax(-1) != blob["val_labels"]).sum(-1).tolist()
    for r, final in zip(recs, final_val_errors):
        assert final == min(r["val_errors"])
        assert r["final_epoch"] == r["val_errors"].index(min(r["val_errors"])) + 1
        assert 0.0 < r["train_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="keep_best needs a validation split"):
        train.resolve({"keep_best": True, "val_size": 0})


def test_val_every_thins_the_validation_history_and_leaves_training_as_it_was(mnist_root, tmp_path):
    """`val_every: 2` validates after epochs 2 and 3 (the last) of 3, None between; the training, its losses and the
    final nets are bit for bit those of validating every epoch. keep_best needs every epoch."""
    cfg = {**SMALL, "epochs": 3}
    every = _run(cfg, [0, 1], tmp_path / "a", mnist_root)
    thin = _run({**cfg, "val_every": 2}, [0, 1], tmp_path / "b", mnist_root)
    for a, b in zip(every, thin):
        assert b["val_errors"] == [None, a["val_errors"][1], a["val_errors"][2]] and None not in a["val_errors"]
        assert a["train_loss"] == b["train_loss"] and a["test_errors"] == b["test_errors"]
    wa = torch.load(tmp_path / "a" / "model.pt", weights_only=False)["state_dict"]
    wb = torch.load(tmp_path / "b" / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ValueError, match="keep_best compares every epoch on validation"):
        train.resolve({"keep_best": True, "val_every": 5})


def test_teacher_batch_gives_each_member_its_own_teachers():
    n, c = 50, 4
    teacher = torch.randn(6, n, c)  # 3 students x 2 teachers each, or 6 for everyone
    idx = torch.randint(0, n, (3, 7))
    ens = train.teacher_batch(teacher, idx, "ensemble")
    assert ens.shape == (6, 3, 7, c) and torch.equal(ens[4, 1], teacher[4][idx[1]])
    grouped = train.teacher_batch(teacher.reshape(3, 2, n, c), idx, "grouped")
    assert grouped.shape == (2, 3, 7, c)
    for k in range(3):
        for g in range(2):
            assert torch.equal(grouped[g, k], teacher[2 * k + g][idx[k]])
    paired = train.teacher_batch(teacher[:3], idx, "paired")
    assert paired.shape == (3, 7, c) and torch.equal(paired[2], teacher[2][idx[2]])


def test_a_diverged_run_stops_instead_of_writing_a_result(mnist_root, tmp_path):
    """lr 50 with gradient clipping does not produce NaN: the nets end up answering one class. That must not be
    reported as a normal (10% accuracy) result."""
    cfg = {**SMALL, "lr": 50.0, "grad_clip": 1.0}
    with pytest.raises(train.DivergedError,
                       match=r"run mnist/diverged: the net gives one answer for almost every example"):
        train.train(train.resolve_spec(cfg), [0], tmp_path / "d", device="cpu", root=mnist_root, progress=False,
                    name="mnist/diverged")
    assert not (tmp_path / "d" / "seed0" / "metrics.json").exists()


def test_the_chance_check_judges_every_class_not_the_majority(capsys):
    y = torch.tensor([0] * 90 + [1] * 5 + [2] * 5)
    constant = torch.zeros(2, 100, 3)
    constant[..., 0] = 1.0  # always the majority class: 90% accuracy, balanced accuracy 1/3
    with pytest.raises(train.DivergedError,
                       match="seed 7: 100.00%, seed 8: 100.00% of them; its most frequent class is 90.0%"):
        train._check_learned(constant, y, [7, 8], "r")
    # a specialist biased towards its small classes: accuracy below the majority's 90%, yet it learned
    biased = torch.nn.functional.one_hot(torch.tensor([1] * 30 + [0] * 60 + [1] * 5 + [2] * 5), 3).float()
    assert train._check_learned(biased[None], y, [0], "r") == [False]
    # two classes answered: balanced accuracy 89/270, at chance but not collapsed -> flagged, not stopped
    weak = torch.nn.functional.one_hot(torch.tensor([0] * 80 + [1] * 10 + [0] * 10), 3).float()
    assert train._check_learned(weak[None], y, [3], "r") == [True]
    assert "run r seed 3: balanced accuracy" in capsys.readouterr().out


def test_a_feature_variant_trains_its_regressor_against_its_paired_teacher_net(mnist_root, tmp_path):
    """fitnets: student k's hint comes from teacher net teacher_members[k]; the regressor trains with the student,
    is checkpointed, and the member loss is the same mapped over members as looped."""
    _run(SMALL, [0, 1], tmp_path / "t", mnist_root)
    train.teacher_logits(tmp_path / "t" / "model.pt", tmp_path / "t" / "tl.pt", root=mnist_root, device="cpu",
                         members=[1, 0])
    cfg = {**SMALL, "epochs": 1, "widths": [784, 24, 10], "variant": "fitnets", "teacher_pairing": "paired",
           "teacher_logits": str(tmp_path / "t" / "tl.pt"), "teacher_model": str(tmp_path / "t" / "model.pt"),
           "teacher_members": [1, 0], "variant_params": {"temperature": 4.0, "hint_weight": 1.0}}
    resolved = train.resolve_spec(cfg)
    data = train.load_run_data(resolved, [0, 1], mnist_root, torch.device("cpu"))
    eng = train.build_engine(resolved, [0, 1], data, torch.device("cpu"))
    x = data.train.inputs(data.tr_idx[:8])
    t = train.models.load(tmp_path / "t" / "model.pt")
    torch.testing.assert_close(eng.teacher.features(x.expand(2, -1, -1))[0], t(x, hidden=True)[1][1])
    before = eng.student.own["regressor"].detach().clone()
    assert before.shape == (2, 24, 48)

    def stop(epoch, history):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(cfg, [0, 1], tmp_path / "f", mnist_root, on_epoch_end=stop)
    state = torch.load(tmp_path / "f" / "checkpoint.pt", weights_only=False)
    assert state["history"]["train_terms"][0].keys() == {"hard", "soft", "hint"}
    assert not torch.equal(state["model"]["own.regressor"], before)
    rec = _run(cfg, [0, 1], tmp_path / "f", mnist_root)  # resumes, then writes the records
    assert rec[0]["resumed_after_epoch"] == 1 and rec[0]["test_errors"] < 9000
    idx = data.tr_idx[:16].expand(2, -1)
    logits, hidden = eng.student.model(data.train.inputs(idx), hidden=True)
    feats = {"student": hidden, "teacher": eng.teacher.features(data.train.inputs(idx)), **eng.student.own}
    mapped = eng.loss_fn(logits, data.y_train[idx], eng.teacher.batch(idx), feats)
    for k in range(2):  # the variant called on member k alone gives the mapped values
        one = eng.variant(logits[k], data.y_train[idx][k], eng.teacher.batch(idx)[k],
                          features={n: v[k] for n, v in feats.items()}, **resolved.distillation.variant_params)
        for name in mapped:
            torch.testing.assert_close(one[name], mapped[name][k])


def test_bootstrap_gives_each_member_its_own_resample_and_resumes_it():
    from kdbench.data import sampling
    tr = torch.arange(100, 1100)
    s = sampling.EpochSampler(tr, [3, 4], bootstrap=True)
    e1, e2 = s.epoch(), s.epoch()
    assert e1.shape == (2, 1000)
    for k in range(2):
        assert torch.equal(e1[k].sort().values, e2[k].sort().values)  # a member keeps its one resample
        assert torch.isin(e1[k], tr).all() and 550 < e1[k].unique().numel() < 720  # with replacement: ~63% unique
    assert not torch.equal(e1[0].sort().values, e1[1].sort().values)  # members draw different resamples
    again = sampling.EpochSampler(tr, [4], bootstrap=True)
    assert torch.equal(again.epoch()[0].sort().values, e1[1].sort().values)  # the resample follows the seed alone
    plain = sampling.EpochSampler(tr, [3]).epoch()[0]
    assert torch.equal(plain.sort().values, tr)


def test_mixup_mixes_each_members_batch_with_a_shuffle_of_itself():
    torch.manual_seed(0)
    x = torch.randn(3, 50, 7)
    mixed, lam, partner = train.mixup(x, 0.4)
    assert lam.shape == (3,) and ((lam >= 0) & (lam <= 1)).all() and len(set(lam.tolist())) == 3
    for k in range(3):
        assert torch.equal(partner[k].sort().values, torch.arange(50))  # a permutation of the member's batch
        torch.testing.assert_close(mixed[k], lam[k] * x[k] + (1 - lam[k]) * x[k, partner[k]])


def test_a_mixup_step_mixes_the_hard_targets_as_it_mixes_the_inputs(mnist_root):
    cfg = train.resolve_spec({**SMALL, "mixup": 0.4})
    data = train.load_run_data(cfg, [0, 1], mnist_root, torch.device("cpu"))
    eng = train.build_engine(cfg, [0, 1], data, torch.device("cpu"))
    idx = data.tr_idx[:64].view(2, 32)
    x, y = data.train.inputs(idx), data.y_train[idx]
    torch.manual_seed(3)
    mixed, lam, partner = train.mixup(x, 0.4)
    with torch.no_grad():
        logp = torch.log_softmax(eng.student.model(mixed), -1)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    partner_onehot = torch.gather(onehot, 1, partner[..., None].expand_as(onehot))
    target = lam.view(2, 1, 1) * onehot + (1 - lam.view(2, 1, 1)) * partner_onehot
    expected = -(target * logp).sum(-1).mean(-1)
    torch.manual_seed(3)
    names, values = eng.step(data, idx)
    assert names == ["hard"]
    torch.testing.assert_close(values[0], expected)


@pytest.mark.parametrize("pairing,members", [("paired", [3, 1]), ("grouped", None), ("ensemble", None)])
def test_a_live_teacher_on_unmixed_inputs_gives_the_cached_logits(mnist_root, tmp_path, pairing, members):
    """With mixup the teacher nets run on the student's inputs; on unmixed inputs they must give exactly what the
    cache gives, for every pairing (paired: chosen members, grouped: 2 per seed, ensemble: all 4 for each seed)."""
    _run({**SMALL, "epochs": 1}, [0, 1, 2, 3], tmp_path / "t", mnist_root)
    model = tmp_path / "t" / "model.pt"
    train.teacher_logits(model, tmp_path / "tl.pt", root=mnist_root, device="cpu", members=members)
    common = {**SMALL, "variant": "hinton", "teacher_pairing": pairing}
    cached_cfg = train.resolve_spec({**common, "teacher_logits": str(tmp_path / "tl.pt")})
    live_cfg = train.resolve_spec({**common, "mixup": 0.4, "teacher_model": str(model), "teacher_members": members})
    data = train.load_run_data(cached_cfg, [0, 1], mnist_root, torch.device("cpu"))
    cached = train.teachers.Teacher(cached_cfg, torch.device("cpu"), len(data.train), 2)
    live = train.teachers.Teacher(live_cfg, torch.device("cpu"), len(data.train), 2)
    assert live.live and live.logits is None and live.grouped == cached.grouped
    idx = data.tr_idx[:40].view(2, 20)
    torch.testing.assert_close(live.batch(idx, data.train.inputs(idx)), cached.batch(idx), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not teacher_logits"):
        train.teachers.Teacher(TrainSpec.from_config({**live_cfg.config(), "teacher_logits": str(tmp_path / "tl.pt")}),
                               torch.device("cpu"), len(data.train), 2)


def test_precision_is_recorded_and_bf16_runs_the_nets_in_bfloat16_with_fp32_masters(mnist_root, tmp_path):
    fp32 = _run(SMALL, [0], tmp_path / "fp32", mnist_root)[0]
    bf16 = _run({**SMALL, "precision": "bf16"}, [0], tmp_path / "bf16", mnist_root)[0]
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    assert bf16["config"]["precision"] == "bf16"
    # the same net learns as well in bf16 (a 48-unit net on 4,000 images), and yet the numbers are its own
    assert bf16["test_errors"] < 1500 and bf16["train_loss"] != fp32["train_loss"]
    model = torch.load(tmp_path / "bf16" / "model.pt", weights_only=False)
    assert all(t.dtype == torch.float32 for t in model["state_dict"].values())  # the master weights stay fp32

    cfg = train.resolve_spec({**SMALL, "precision": "bf16"})
    data = train.load_run_data(cfg, [0], mnist_root, torch.device("cpu"))
    eng = train.build_engine(cfg, [0], data, torch.device("cpu"))
    with eng.nets():
        assert eng.student.model(data.train.inputs(data.tr_idx[:4].view(1, -1))).dtype == torch.bfloat16
    eng.spec = dataclasses.replace(cfg, optimisation=dataclasses.replace(cfg.optimisation, precision="fp32"))
    with eng.nets():
        assert eng.student.model(data.train.inputs(data.tr_idx[:4].view(1, -1))).dtype == torch.float32


def test_a_runs_commit_stamp_ignores_results_and_sees_code(tmp_path):
    import subprocess

    from kdbench.records import git_commit
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "kdbench").mkdir()
    (tmp_path / "kdbench" / "x.py").write_text("a = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.csv").write_text("1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    sha = git_commit(tmp_path)
    assert len(sha) == 40 and not sha.endswith("-dirty")
    (tmp_path / "results" / "t.csv").write_text("2\n")  # the workflow rewrote a committed result
    (tmp_path / "results" / "new.csv").write_text("3\n")
    assert git_commit(tmp_path) == sha
    (tmp_path / "kdbench" / "x.py").write_text("a = 2\n")  # the code changed
    assert git_commit(tmp_path) == sha + "-dirty"
    (tmp_path / "kdbench" / "x.py").write_text("a = 1\n")
    (tmp_path / "kdbench" / "y.py").write_text("b = 1\n")  # a new, uncommitted module runs too
    assert git_commit(tmp_path) == sha + "-dirty"
