"""Matplotlib figures: MNIST test errors vs temperature per width, errors per class on the transfer sets with and
without the bias correction, KD variants, and the ensembles section's bars. Written atomically as PNG.

Matplotlib loads when the first figure is drawn (`_plt`), not when this module is imported: the sections import it at
their top, and every `kdbench train` and workflow parse imports the sections."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench.records import atomic_write_bytes


def _plt():
    """matplotlib.pyplot on the file-only Agg backend, imported on the first figure (about 0.5 s)."""
    import matplotlib  # deferred: only a table writer draws
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after use("Agg"), which must come first
    return plt


def _save(fig, path: Path | str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def sweep(summary, widths: list[int], temperatures: list[float], name_of, path: Path | str) -> None:
    """Test errors (mean ± std over seeds) vs T, one line per hidden width; teacher and baseline as references."""
    fig, ax = _plt().subplots(figsize=(6.5, 4.2))
    errs = summary[summary.metric == "test_errors"].set_index("system")
    for w in widths:
        m = [errs.loc[name_of(w, t), "mean"] for t in temperatures]
        s = [errs.loc[name_of(w, t), "std"] for t in temperatures]
        ax.errorbar(temperatures, m, yerr=np.nan_to_num(s), marker="o", capsize=3, label=f"{w}-{w} student")
    for ref, style in (("teacher", ":"), ("baseline", "--")):
        if ref in errs.index:
            ax.axhline(errs.loc[ref, "mean"], color="gray", linestyle=style, label=f"{ref} (mean)")
    ax.set_xscale("log")
    ax.set_xticks(temperatures)
    ax.set_xticklabels([f"{t:g}" for t in temperatures])
    ax.set_yscale("log")
    ax.set_xlabel("distillation temperature T")
    ax.set_ylabel("MNIST test errors (of 10,000)")
    ax.set_title("Width × temperature (paper §3)")
    ax.legend(fontsize=8)
    _save(fig, path)


def transfer(panels: list[tuple[str, list[dict]]], path: Path | str) -> None:
    """Errors per true class, mean over seeds: raw, validation-chosen shift, the paper's shift. `panels` holds
    (title, per-seed records of kdbench.sections.bias.correct)."""
    fig, axes = _plt().subplots(1, len(panels), figsize=(6 * len(panels), 3.8), squeeze=False)
    for ax, (title, members) in zip(axes[0], panels):
        classes = np.arange(len(members[0]["raw"]["per_class_errors"]))
        for i, (key, label) in enumerate((("raw", "no correction"), ("val_chosen", "shift chosen on validation"),
                                          ("paper", "paper's shift"))):
            vals = np.mean([m[key]["per_class_errors"] for m in members], axis=0)
            shift = {"raw": "", "val_chosen": f" ({np.mean([m['val_shift'] for m in members]):+.1f})",
                     "paper": f" ({members[0]['paper_shift']:+.1f})"}[key]
            ax.bar(classes + (i - 1) * 0.27, vals, width=0.27, label=label + shift)
        ax.set_xticks(classes)
        ax.set_xlabel("true class")
        ax.set_ylabel("test errors (mean over seeds)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    _save(fig, path)


PANEL_TITLES = {"mnist": "MNIST students (section 3): test errors of 10,000, lower is better",
                "table1": "Students of the ensembles (Table 1): test accuracy %, higher is better",
                "table5": "3% nets learning from the 100%-data net (Table 5): test accuracy %, higher is better"}


def variants(df, path: Path | str) -> None:
    """Each KD variant's metric (mean ± std over seeds), one panel per group of experiments (MNIST errors, Table 1
    and Table 5 accuracies) stacked in a column of page width, each panel titled, one legend for all above them.
    Points with error bars, not bars: the y axis holds the values' range, which a bar from zero would hide."""
    groups = list(dict.fromkeys(df.table)) if "table" in df else [None]
    names = list(dict.fromkeys(df.variant))
    fig, axes = _plt().subplots(len(groups), 1, figsize=(12, 3.2 * len(groups) + 0.6), squeeze=False)
    width = 0.8 / len(names)
    for ax, g in zip(axes[:, 0], groups):
        sub_g = df if g is None else df[df.table == g]
        exps = list(dict.fromkeys(sub_g.experiment))
        for i, v in enumerate(names):
            sub = sub_g[sub_g.variant == v].set_index("experiment").reindex(exps)
            ax.errorbar(np.arange(len(exps)) + (i - (len(names) - 1) / 2) * width, sub["mean"],
                        yerr=np.nan_to_num(sub["std"].to_numpy(dtype=float)), fmt="o", capsize=2, color=f"C{i}",
                        label=v)
        ax.set_xticks(np.arange(len(exps)))
        ax.set_xticklabels(exps, fontsize=8)
        ax.set_xlim(-0.6, len(exps) - 0.4)
        metric = sub_g.metric.iloc[0] if "metric" in sub_g else "test_errors"
        ax.set_ylabel("test errors" if metric == "test_errors" else "test accuracy %")
        ax.grid(axis="y", linewidth=0.4, alpha=0.6)
        ax.set_title(PANEL_TITLES.get(g, "KD variants") + ", mean ± std over seeds", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(names), 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (3.2 * len(groups) + 0.6)))
    _save(fig, path)


def variants_leaderboard(df, path: Path | str) -> None:
    """Each variant's paired difference to `hinton` with its 95% interval, turned so that up is better (fewer
    errors, more accuracy), one panel per group of experiments, a line at 0: where a whisker clears it, the variant
    beats or loses to hinton in that experiment."""
    others = df[df.variant != "hinton"]
    groups = list(dict.fromkeys(others.table)) if "table" in others else [None]
    names = list(dict.fromkeys(others.variant))
    fig, axes = _plt().subplots(max(len(groups), 1), 1, figsize=(12, 3.2 * max(len(groups), 1) + 0.6), squeeze=False)
    width = 0.8 / max(len(names), 1)
    for ax, g in zip(axes[:, 0], groups):
        sub_g = others if g is None else others[others.table == g]
        exps = list(dict.fromkeys(sub_g.experiment))
        sign = -1.0 if sub_g.metric.iloc[0] == "test_errors" else 1.0
        for i, v in enumerate(names):
            sub = sub_g[sub_g.variant == v].set_index("experiment").reindex(exps)
            mid = sign * sub["diff_vs_hinton_mean"].to_numpy(dtype=float)
            ends = np.sort(sign * sub[["diff_ci95_low", "diff_ci95_high"]].to_numpy(dtype=float), axis=1)
            yerr = np.nan_to_num(np.stack([mid - ends[:, 0], ends[:, 1] - mid]))
            ax.errorbar(np.arange(len(exps)) + (i - (len(names) - 1) / 2) * width, mid, yerr=yerr, fmt="o",
                        capsize=2, color=f"C{i}", label=v)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(exps)))
        ax.set_xticklabels(exps, fontsize=8)
        ax.set_xlim(-0.6, len(exps) - 0.4)
        ax.set_ylabel("fewer errors than hinton" if sign < 0 else "accuracy points over hinton")
        ax.grid(axis="y", linewidth=0.4, alpha=0.6)
        title = PANEL_TITLES.get(g, "KD variants").split(":")[0]
        ax.set_title(f"{title}: difference to hinton, paired 95% interval, up is better", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(max(len(names), 1), 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (3.2 * max(len(groups), 1) + 0.6)))
    _save(fig, path)


def ci_errors(rows) -> np.ndarray:
    """(2, n) error-bar lengths below and above each summary row's mean to its 95% interval (0 where it has none)."""
    mean = np.array([r["mean"] for r in rows], dtype=float)
    low = np.array([r["ci95_low"] for r in rows], dtype=float)
    high = np.array([r["ci95_high"] for r in rows], dtype=float)
    return np.nan_to_num(np.stack([mean - low, high - mean]))


def _claims(ax, summary, ds: str) -> None:
    """The derived claims of one dataset with their 95% intervals, the paper's value as a black mark."""
    sub = summary[summary.section == ds].set_index(["table", "system", "metric"])
    keys = [("table1", "ensemble_arithmetic", "gain_over_members_pct", "ensemble gain\n(points)"),
            ("table1", "distilled", "gain_recovered_pct", "gain kept by\ndistilled net %"),
            ("table5", "soft_3", "gap_recovered_pct", "3% gap recovered\nby soft targets %")]
    keys = [k for k in keys if k[:3] in sub.index]
    rows = [sub.loc[k[:3]] for k in keys]
    ax.bar(range(len(rows)), [r["mean"] for r in rows], yerr=ci_errors(rows), capsize=4, color="C4")
    for x, r in enumerate(rows):
        if not pd.isna(r["paper"]):
            ax.plot([x - 0.4, x + 0.4], [r["paper"]] * 2, color="black", linewidth=2)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([k[3] for k in keys], fontsize=8)
    ax.set_title(f"{ds}: claims, 95% interval over seeds (paper: black)", fontsize=9)


def ensembles(summary, facts: dict, dataset_names: list[str], path: Path | str) -> None:
    """Per dataset: Table 1 bars (baseline, ensembles, distilled), Table 5 bars (100%, 3% hard, 3% soft) with
    mean ± std error bars, test accuracy against ensemble size, and the derived claims with 95% intervals."""
    fig, axes = _plt().subplots(len(dataset_names), 4, figsize=(18, 3.8 * len(dataset_names)), squeeze=False)
    for row, ds in zip(axes, dataset_names):
        acc = summary[(summary.section == ds) & (summary.metric == "test_accuracy_pct")].set_index(["table", "system"])
        for ax, table, systems, title in (
                (row[0], "table1", ["baseline", "ensemble_arithmetic", "ensemble_geometric", "distilled"],
                 "Table 1 analog"),
                (row[1], "table5", [x for x in ("baseline_100", "baseline_3", "soft_3", "baseline_3_mixup",
                                                 "soft_3_mixup") if ("table5", x) in acc.index],
                 "Table 5 analog (mixup: beyond the paper)")):
            m = [acc.loc[(table, s), "mean"] for s in systems]
            s = np.nan_to_num([acc.loc[(table, s_), "std"] for s_ in systems])
            ax.bar(range(len(systems)), m, yerr=s, capsize=4, color=[f"C{i}" for i in range(len(systems))])
            lo = min(m) - 3 * max(max(s), 0.5)
            ax.set_ylim(max(0.0, lo), min(100.0, max(m) + 3 * max(max(s), 0.5)))
            ax.set_xticks(range(len(systems)))
            ax.set_xticklabels([x.replace("_", "\n") for x in systems], fontsize=8)
            ax.set_ylabel("test accuracy % (frames for speech)")
            ax.set_title(f"{ds}: {title}", fontsize=9)
        curve = facts[ds].get("size_curve")
        if curve is None:  # a row kept from committed tables made before its curve was kept (ensembles.row_facts)
            row[2].text(0.5, 0.5, "size curve not kept:\nthis row's logits are absent and\nits committed tables "
                        "predate the curve's file;\nretrain the row to draw it", ha="center", va="center",
                        fontsize=8, transform=row[2].transAxes)
            row[2].set_axis_off()
        else:
            for seed, vals in curve.items():
                if seed != "sizes":
                    row[2].plot(curve["sizes"], vals, marker="o", label=f"ensemble of seed {seed}")
            row[2].set_xticks(curve["sizes"])  # whole members: integer ticks
            row[2].set_xlabel("members averaged (arithmetic mean)")
            row[2].set_ylabel("test accuracy %")
            row[2].legend(fontsize=8)
        row[2].set_title(f"{ds}: accuracy vs ensemble size", fontsize=9)
        _claims(row[3], summary, ds)
    fig.tight_layout()  # a row's titles clear the tick labels of the row above
    _save(fig, path)


def specialists(summary, facts: dict, path: Path | str) -> None:
    """Per dataset: the relative change in accuracy (mean and 95% interval over seeds) by the number of specialists
    covering the test case's correct class (the paper's Table 4), with the number of test cases under each bar."""
    names = list(facts)
    fig, axes = _plt().subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], names):
        counts = list(facts[ds]["per_seed"][0]["by_coverage"])
        rows = [summary[(summary.system == f"{ds}/covered_by_{n}") & (summary.metric == "relative_change_pct")]
                .iloc[0] for n in counts]
        cases = [facts[ds]["per_seed"][0]["by_coverage"][n]["cases"] for n in counts]
        ax.bar(range(len(counts)), [r["mean"] for r in rows], yerr=ci_errors(rows), capsize=4, color="C2")
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_xticks(range(len(counts)))
        ax.set_xticklabels([f"{k}\n({n} test cases)" for k, n in zip(counts, cases)], fontsize=8)
        ax.set_xlabel("specialists covering the correct class")
        ax.set_ylabel("relative accuracy change % (vs generalist),\nmean and 95% interval over seeds")
        ax.set_title(f"{ds}: generalist + specialists (Table 4 analog)")
    fig.tight_layout()  # each panel's y label clears the panel to its left
    _save(fig, path)
