"""Section-3 plumbing: per-system configs, the bias correction's choice, summary statistics."""
import math

import pytest
import torch
import yaml
from conftest import REPO

from kdbench.report.aggregate import Cell
from kdbench.sections import bias, mnist

SMOKE = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())


def test_train_configs_per_system():
    t = mnist.train_config(SMOKE, "teacher")
    assert t["jitter"] == 2 and t["dropout_hidden"] == 0.5 and "teacher_logits" not in t
    d = mnist.train_config(SMOKE, "distilled_T20", teacher_logits="tl.pt")
    assert d["variant"] == "hinton" and d["teacher_logits"] == "tl.pt" and d["teacher_pairing"] == "paired"
    s = mnist.train_config(SMOKE, "sweep_w30_T2.5", teacher_logits="tl.pt")
    assert s["widths"] == [784, 30, 30, 10] and s["variant_params"]["temperature"] == 2.5
    assert s["variant_params"]["hard_weight"] == 0.1  # inherited from the distilled student
    o = mnist.train_config(SMOKE, "omit3", teacher_logits="tl.pt")
    assert 3 not in o["transfer_classes"] and len(o["transfer_classes"]) == 9
    assert mnist.train_config(SMOKE, "only78", teacher_logits="tl.pt")["transfer_classes"] == [7, 8]
    with pytest.raises(ValueError, match="unknown MNIST system"):
        mnist.train_config(SMOKE, "sweep")


def _blob(deficit=4.0, n=600, seed=0):
    """Logits of a net that is right everywhere except that class 3's logit is `deficit` too low."""
    g = torch.Generator().manual_seed(seed)
    def split():
        y = torch.randint(0, 10, (n,), generator=g)
        logits = torch.randn(2, n, 10, generator=g)
        logits[:, torch.arange(n), y] += 3.0
        logits[..., 3] -= deficit
        return logits, y
    v, yv = split()
    t, yt = split()
    return {"val": v, "val_labels": yv, "test": t, "test_labels": yt, "seeds": [0, 1]}


def test_bias_correction_chosen_on_validation_fixes_the_omitted_class():
    blob = _blob()
    out = bias.correct(blob, [3], grid=[0, 1, 2, 3, 4, 5, 6], paper_shift=3.5)
    for m in out:
        assert m["val_shift"] in (3, 4, 5)
        assert m["raw"]["per_class_errors"][3] > 0.9 * m["raw"]["per_class_counts"][3]
        assert m["val_chosen"]["per_class_errors"][3] < 0.2 * m["raw"]["per_class_errors"][3]
        assert m["val_chosen"]["errors"] < m["raw"]["errors"]


def test_bias_choice_prefers_the_smallest_shift_on_ties():
    blob = _blob(deficit=0.0)
    assert bias.choose_shift(blob["val"], blob["val_labels"], [3], [-0.01, 0.0, 0.01]) == [0.0, 0.0]


def test_cell_statistics():
    c = Cell("mnist", "sec3", "teacher", "test_errors", "count", [(0, 70, "a"), (1, 80, "b"), (2, 90, "c")])
    row = c.summary({("mnist", "teacher", "test_errors"): 67})
    assert row["mean"] == 80 and row["std"] == pytest.approx(10.0) and row["n_seeds"] == 3 and row["paper"] == 67
    one = Cell("mnist", "sec3", "x", "m", "count", [(0, 5.0, "a")]).summary({})
    assert one["mean"] == 5.0 and math.isnan(one["std"]) and math.isnan(one["paper"])
