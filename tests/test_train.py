"""The training engine: deterministic, resumable, stops on NaN, records every run, reads cached teacher logits."""
import json

import pytest
import torch

from kdbench import train

SMALL = dict(widths=[784, 48, 10], epochs=2, train_fraction=0.08, val_size=1000, lr=0.05, batch_size=100)


def _run(cfg, seeds, out, data_root, **kw):
    return train.train(cfg, seeds, out, device="cpu", root=data_root, progress=False, **kw)


def test_same_seed_same_numbers_and_a_useful_record(data_root, tmp_path):
    a = _run(SMALL, [0, 1], tmp_path / "a", data_root)
    b = _run(SMALL, [0, 1], tmp_path / "b", data_root)
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


def test_one_member_alone_equals_that_member_in_a_batch(data_root, tmp_path):
    together = _run(SMALL, [0, 1], tmp_path / "t", data_root)
    alone = _run(SMALL, [1], tmp_path / "s", data_root)
    assert together[1]["val_errors"] == alone[0]["val_errors"]
    assert together[1]["train_loss"] == pytest.approx(alone[0]["train_loss"], rel=1e-4)


def test_interrupted_run_resumes_to_the_same_result(data_root, tmp_path):
    cfg = {**SMALL, "dropout_hidden": 0.3, "jitter": 2, "epochs": 3}
    straight = _run(cfg, [5], tmp_path / "straight", data_root)

    def interrupt(epoch, history):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(cfg, [5], tmp_path / "resumed", data_root, on_epoch_end=interrupt)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    assert not (tmp_path / "resumed" / "seed5" / "metrics.json").exists()
    resumed = _run(cfg, [5], tmp_path / "resumed", data_root)
    assert resumed[0]["train_loss"] == straight[0]["train_loss"]
    assert resumed[0]["test_errors"] == straight[0]["test_errors"]


def test_a_checkpoint_made_on_other_data_is_not_resumed(data_root, tmp_path, capsys):
    cfg = {**SMALL, "epochs": 2}

    def interrupt(epoch, history):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(cfg, [5], tmp_path / "r", data_root, on_epoch_end=interrupt)
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    ck["data"] = "speech-v1-older-features"
    ck["history"]["train_loss"] = [[123.0]]  # would show up if this checkpoint were resumed
    torch.save(ck, tmp_path / "r" / "checkpoint.pt")
    rec = _run(cfg, [5], tmp_path / "r", data_root)[0]
    assert "starting over" in capsys.readouterr().out
    assert len(rec["train_loss"]) == 2 and rec["train_loss"][0] != 123.0


def test_nan_loss_stops_the_run_and_names_it(data_root, tmp_path):
    cfg = {**SMALL, "lr": 1e6, "check_every": 5}
    with pytest.raises(train.NonFiniteLossError, match=r"run mnist/exploding: loss term 'hard' became (nan|inf)"):
        train.train(cfg, [0], tmp_path / "x", device="cpu", root=data_root, progress=False, name="mnist/exploding")
    assert not (tmp_path / "x" / "seed0" / "metrics.json").exists()


def test_no_validation_split_trains_on_everything(data_root, tmp_path):
    rec = _run({**SMALL, "val_size": 0, "epochs": 1}, [0], tmp_path / "all", data_root)[0]
    assert rec["val_examples"] == 0 and rec["val_errors"] == [None]
    assert rec["train_examples"] == round(0.08 * 60000)


def test_unknown_config_key_is_refused():
    with pytest.raises(ValueError, match="unknown training config key.*'epoch'"):
        train.resolve({"epoch": 3})


def test_student_learns_from_cached_teacher_logits(data_root, tmp_path):
    teacher = _run({**SMALL, "widths": [784, 128, 10], "epochs": 3}, [0, 1], tmp_path / "teacher", data_root)
    logits = train.teacher_logits(tmp_path / "teacher" / "model.pt", tmp_path / "tl.pt", root=data_root,
                                  device="cpu")
    assert logits.shape == (2, 60000, 10)
    # the cached logits are the teacher's own predictions: same test-free check on the validation split
    saved = torch.load(tmp_path / "teacher" / "logits.pt")
    assert torch.allclose(logits[:, saved["val_idx"]], saved["val"], atol=1e-4)
    student_cfg = {**SMALL, "variant": "hinton", "teacher_logits": str(tmp_path / "tl.pt"),
                   "variant_params": {"temperature": 4.0, "hard_weight": 0.0}, "teacher_pairing": "paired"}
    stu = _run(student_cfg, [0, 1], tmp_path / "student", data_root)
    assert set(stu[0]["train_terms"][0]) == {"hard", "soft"}
    assert stu[0]["train_terms"][-1]["hard"] == 0.0
    # soft targets alone (no labels) teach the classes: far better than chance
    assert all(r["test_errors"] < 2000 for r in stu)
    ens = _run({**student_cfg, "teacher_pairing": "ensemble"}, [3], tmp_path / "ens", data_root)
    assert ens[0]["test_errors"] < 2000
    with pytest.raises(ValueError, match="paired teacher needs one teacher member per seed"):
        _run(student_cfg, [0, 1, 2], tmp_path / "bad", data_root)
    with pytest.raises(ValueError, match="needs teacher logits"):
        _run({**SMALL, "variant": "hinton"}, [0], tmp_path / "bad2", data_root)


def test_transfer_set_without_a_class(data_root, tmp_path):
    cfg = {**SMALL, "transfer_classes": [0, 1, 2, 4, 5, 6, 7, 8, 9]}
    rec = _run(cfg, [0], tmp_path / "no3", data_root)[0]
    assert rec["test_per_class_errors"][3] == rec["test_per_class_counts"][3]  # never saw a 3, never predicts one
    labels = torch.tensor([0, 3, 3, 5, 1] * 20)
    tr, val = train.training_indices({**train.DEFAULTS, "val_size": 10, "transfer_classes": [0, 1, 5]}, labels)
    assert not set(tr.tolist()) & set(val.tolist()) and 3 not in labels[tr].tolist()


def test_keep_best_ends_each_member_at_its_best_validation_epoch(data_root, tmp_path):
    cfg = {**SMALL, "epochs": 4, "lr": 0.4, "schedule": "constant", "keep_best": True}
    recs = _run(cfg, [0, 1, 2], tmp_path / "b", data_root)
    blob = torch.load(tmp_path / "b" / "logits.pt", weights_only=False)
    final_val_errors = (blob["val"].argmax(-1) != blob["val_labels"]).sum(-1).tolist()
    for r, final in zip(recs, final_val_errors):
        assert final == min(r["val_errors"])
        assert r["final_epoch"] == r["val_errors"].index(min(r["val_errors"])) + 1
        assert 0.0 < r["train_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="keep_best needs a validation split"):
        train.resolve({"keep_best": True, "val_size": 0})


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
