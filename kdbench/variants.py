"""KD variants side by side: every distillation experiment re-run once per chosen variant, compared to `hinton`.

What this file achieves: from the profile's `variants` (names in the losses registry, including those that
`variant_modules` files register) and `variant_params` (per-variant hyperparameters) it builds the training config
of each (experiment, variant) pair, reusing the experiment's cached teacher logits, so adding a variant trains only
its students. Experiments so far (MNIST, section 3):
  - `mnist_distilled_T20`: the distilled 800-800 student at T=20 (its `hinton` run is the section's own run);
  - `mnist_w{W}_bestT`: the W-unit student at the temperature the sweep found best on validation.
A variant's parameters are the experiment's `temperature` and `hard_weight` where the variant takes them, then the
profile's `variant_params[name]`. A `teacher="self"` variant (born-again) learns from the experiment's `hard` run,
a trained copy of its own architecture. The tables give mean ± std over seeds and the paired difference to
`hinton` on the same seeds with a paired t-test note.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from kdbench import losses, mnist
from kdbench.aggregate import fmt, mean_std, read_json

# two-sided 95% critical values of Student's t, by degrees of freedom (1..10); larger df use 1.96
T_CRIT_95 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23]


def experiments(cfg: dict) -> list[str]:
    return ["mnist_distilled_T20", f"mnist_w{cfg['variant_experiments']['mnist_bestT_width']}_bestT"]


def base_system(cfg: dict, experiment: str) -> str:
    """The section-3 system whose recipe the experiment's students follow."""
    if experiment == "mnist_distilled_T20":
        return "distilled_T20"
    width = int(experiment[len("mnist_w"):-len("_bestT")])
    return mnist.sweep_name(width, cfg["mnist"]["sweep"]["temperatures"][0])  # T is set from the sweep's choice


def run_dir(runs: Path | str, experiment: str, variant: str) -> Path:
    """Where a variant's run of an experiment lives; `hinton` at T=20 is the section's own distilled run."""
    if (experiment, variant) == ("mnist_distilled_T20", "hinton"):
        return Path(runs) / "distilled_T20"
    return Path(runs) / "variants" / experiment / variant


def needs_chosen_temperature(experiment: str) -> bool:
    return experiment.endswith("_bestT")


def train_config(cfg: dict, experiment: str, variant: str, teacher_logits: str | None) -> dict:
    """The `kdbench.train` config of one variant in one experiment."""
    v = losses.get(variant)
    base = mnist.train_config(cfg, base_system(cfg, experiment), teacher_logits="<none>")
    exp_params = base.get("variant_params", {})
    params = {k: exp_params[k] for k in ("temperature", "hard_weight") if k in v.defaults and k in exp_params}
    params.update(cfg.get("variant_params", {}).get(variant, {}))
    out = {**base, "variant": variant, "variant_params": params,
           "variant_modules": [str(p) for p in cfg.get("variant_modules", [])],
           "teacher_logits": teacher_logits if v.needs_teacher else None}
    return out


def choose_temperature(cfg: dict, runs: Path, width: int) -> dict:
    """The sweep's temperature for `width` with the fewest validation errors (final epoch, mean over seeds)."""
    scores = {}
    for t in cfg["mnist"]["sweep"]["temperatures"]:
        errs = [read_json(runs / mnist.sweep_name(width, t) / f"seed{s}" / "metrics.json")["val_errors"][-1]
                for s in cfg["seeds"]]
        scores[t] = sum(errs) / len(errs)
    best = min(scores, key=lambda t: (scores[t], t))
    return {"width": width, "temperature": best, "val_errors_by_temperature": {f"{t:g}": e for t, e in scores.items()}}


def paired_note(diffs: list[float]) -> tuple[float, float, str]:
    """Mean and std of paired differences (variant - hinton) and a paired t-test note at the 5% level."""
    n = len(diffs)
    mean, std = mean_std(diffs)
    if n < 2:
        return mean, std, "one seed: no test"
    crit = T_CRIT_95[n - 2] if n - 1 <= len(T_CRIT_95) else 1.96
    if std == 0:
        return mean, std, "identical on every seed" if mean == 0 else "same difference on every seed"
    t = mean / (std / math.sqrt(n))
    verdict = "p < 0.05" if abs(t) > crit else "n.s."
    return mean, std, f"paired t = {t:.2f}, {verdict} (n = {n})"


def table(cfg: dict, runs: Path | str) -> pd.DataFrame:
    """Tidy rows (experiment, variant, seeds' test errors, paired difference to hinton, source files)."""
    rows = []
    for exp in experiments(cfg):
        ref = {s: read_json(run_dir(runs, exp, "hinton") / f"seed{s}" / "metrics.json")["test_errors"]
               for s in cfg["seeds"]}
        for variant in cfg["variants"]:
            paths = [run_dir(runs, exp, variant) / f"seed{s}" / "metrics.json" for s in cfg["seeds"]]
            recs = [read_json(p) for p in paths]
            errs = [r["test_errors"] for r in recs]
            n = len(errs)
            mean, std = mean_std(errs)
            d_mean, d_std, note = paired_note([e - ref[s] for s, e in zip(cfg["seeds"], errs)])
            rows.append({"experiment": exp, "variant": variant, "metric": "test_errors", "mean": mean, "std": std,
                         "n_seeds": n, "diff_vs_hinton_mean": d_mean, "diff_vs_hinton_std": d_std,
                         "significance": "reference" if variant == "hinton" else note,
                         "temperature": recs[0]["config"]["variant_params"].get("temperature", math.nan),
                         "sources": ";".join(str(p) for p in paths)})
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame, cfg: dict) -> str:
    exps = list(dict.fromkeys(df.experiment))
    head = []
    for e in exps:
        temps = df[(df.experiment == e) & (df.variant == "hinton")].temperature
        head.append(f"{e} (T={temps.iloc[0]:g})" if len(temps) and not math.isnan(temps.iloc[0]) else e)
    lines = ["# KD variants beside Hinton et al.'s distillation", "",
             f"MNIST test errors (of 10,000), mean ± std over seeds {cfg['seeds']}; in brackets the paired difference "
             "to `hinton` on the same seeds (negative = fewer errors) and a paired t-test at the 5% level. "
             "Every variant reuses the experiment's cached teacher logits; `born_again` learns from the `hard` run "
             "of the same experiment (a trained copy of its own architecture).", "",
             "| variant | " + " | ".join(head) + " |", "|---|" + "---|" * len(exps)]
    for variant in cfg["variants"]:
        cells = []
        for e in exps:
            r = df[(df.experiment == e) & (df.variant == variant)].iloc[0]
            cell = fmt(r["mean"], r["std"])
            if variant != "hinton":
                cell += f" ({r.diff_vs_hinton_mean:+.1f}; {r.significance})"
            cells.append(cell)
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "![variants](variants.png)", ""]
    return "\n".join(lines)
