"""Issue 25: figures that read at a glance: a page's width (<= 2400 px), every panel titled, one legend where the
markers are, whole-number ticks for counts of members."""
import matplotlib
import pandas as pd
import pytest

from kdbench.report import figures

matplotlib.use("Agg")


@pytest.fixture
def captured(monkeypatch):
    """The figure `_save` is given, kept open for the test (and its PNG's size in pixels)."""
    got = {}

    def save(fig, path):
        fig.canvas.draw()
        got["fig"], got["px"] = fig, fig.get_size_inches() * 120
    monkeypatch.setattr(figures, "_save", save)
    return got


def test_the_variants_figure_fits_a_page_and_titles_every_panel(captured):
    rows = [{"experiment": f"{t}_exp{e}", "table": t, "variant": v, "metric": "test_accuracy_pct",
             "mean": 80.0 + e + i, "std": 0.5} for t in ("mnist", "table1", "table5") for e in range(4)
            for i, v in enumerate(["hinton", "hard", "soft_only", "logit_matching", "hinton_geometric", "born_again",
                                   "fitnets", "js_kd"])]
    figures.variants(pd.DataFrame(rows), "unused.png")
    fig = captured["fig"]
    assert captured["px"][0] <= 2400
    axes = fig.get_axes()
    assert len(axes) == 3 and all(ax.get_title() for ax in axes)
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 8  # one legend, every variant in it


def test_the_ensembles_figure_fits_a_page_and_counts_members_in_whole_numbers(captured):
    rows = []
    for table, systems in (("table1", ["baseline", "ensemble_arithmetic", "ensemble_geometric", "distilled"]),
                           ("table5", ["baseline_100", "baseline_3", "soft_3", "baseline_3_mixup", "soft_3_mixup"])):
        for k, sys in enumerate(systems):
            rows.append({"section": "d", "table": table, "system": sys, "metric": "test_accuracy_pct",
                         "mean": 80.0 + k, "std": 0.3, "paper": float("nan"), "ci95_low": 79.0, "ci95_high": 81.0})
    summary = pd.DataFrame(rows)
    facts = {"d": {"size_curve": {"sizes": list(range(1, 11)), 0: [80 + i / 10 for i in range(10)]}}}
    figures.ensembles(summary, facts, ["d"], "unused.png")
    fig = captured["fig"]
    assert captured["px"][0] <= 2400
    curve = fig.get_axes()[2]
    assert [t for t in curve.get_xticks()] == list(range(1, 11))
    t5 = fig.get_axes()[1]
    assert [t.get_text() for t in t5.get_xticklabels()][-1] == "soft\n3\nmixup"
