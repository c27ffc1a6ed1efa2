"""KD variants side by side: every distillation experiment re-run once per chosen variant, compared to `hinton`.

What this file achieves: from the profile's `variants` (names in the losses registry, including those that
`variant_modules` files register) and `variant_params` (per-variant hyperparameters) it builds the training config
of each (experiment, variant) pair, reusing the experiment's cached teacher logits, so adding a variant trains only
its students. The experiments are every distillation experiment of the suite:
  - `mnist_distilled_T20`: the distilled 800-800 MNIST student at T=20 (its `hinton` run is the section's own run);
  - `mnist_w{W}_bestT`: the W-unit MNIST student at the temperature the sweep found best on validation;
  - `{dataset}_distilled_bestT` (Table 1): a net of the members' size distilled from its seed's ensemble, at the
    temperature the ensembles section found best on validation;
  - `{dataset}_soft3` (Table 5): the net on 3% of the data learning from the 100%-data net (its `hinton` run is
    the ensembles section's `soft3`).
A variant's parameters are the experiment's `temperature` and `hard_weight` where the variant takes them, then the
profile's `variant_params[name]`. A `teacher="self"` variant (born-again) learns from the experiment's `hard` run,
a trained copy of its own architecture; a feature variant (`fitnets`) also reads the hidden features of its seed's
teacher net. The Table 5 experiment is the paper-protocol pair (`soft3`, no mixup). Where an experiment mixes its
inputs (`mixup` in its base config), every variant's student mixes them too and its teacher net runs on the mixed
inputs (`teacher_model`) instead of a cache. A tuned variant (`variant_grids[name]`: one or two parameters' values)
trains one student per setting in every experiment, and its row is the setting that experiment's validation split
chooses (`choose_setting`, by the rule the experiment uses for hinton's temperature). The tables give mean ± std over
seeds and the paired difference to `hinton` on the same seeds with a 95% interval and a paired t-test note; the
leaderboard orders the variants per experiment by that difference and counts, per variant, the experiments it beats,
ties and loses to hinton in.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pandas as pd

from kdbench import layout, sections
from kdbench.engine import losses
from kdbench.records import atomic_write_bytes, run_identity
from kdbench.report import aggregate
from kdbench.report import figures as plots
from kdbench.report.aggregate import ci95, fmt, mean_std, paired_note, read_json
from kdbench.sections import Experiment, JobSpec

# the section registry (kdbench.sections): what `rule all` asks of it, and whether it adds to summary.csv
OUTPUTS = ["variants.md", "variants.csv", "variants.png", "variants_leaderboard.png"]
ORDER = 2  # its place in the suite's summary and targets (kdbench.sections)
SUMMARY = False


NOT_RUN = "—"  # a variants table's cell where the variant does not run (outside its `variant_scope`)
TABLES = {"mnist": "MNIST students (section 3), test errors of 10,000",
          "table1": "Students of the ensembles (Table 1), test accuracy % (frame accuracy for speech)",
          "table5": "Nets on 3% of the training set learning from the 100%-data net (Table 5), test accuracy %"}


def experiments(cfg: dict) -> list[Experiment]:
    """Every distillation experiment of the suite: each section's own (`distillation_experiments`), in order."""
    return [e for section in sections.modules() if hasattr(section, "distillation_experiments")
            for e in section.distillation_experiments(cfg)]


def in_scope(cfg: dict, experiment: Experiment, variant: str) -> bool:
    """Whether a variant runs in an experiment: `variant_scope[variant]` lists the experiments (by name, or by their
    table group: mnist, table1, table5) it runs in; a variant the scope does not name runs in every experiment."""
    scope = cfg.get("variant_scope", {}).get(variant)
    return scope is None or experiment.name in scope or experiment.table in scope


def jobs(cfg: dict) -> list[JobSpec]:
    """Every variant's student in every experiment of its scope (the sections' own `hinton` runs excepted);
    born-again variants add the experiment's `hard` run."""
    out = []
    for exp in experiments(cfg):
        names = [v for v in cfg["variants"] if in_scope(cfg, exp, v)]
        if any(losses.get(v).teacher == "self" for v in names) and "hard" not in names:
            names.append("hard")  # born-again teachers: the experiment's own hard run
        for v in names:
            points = grid(cfg, v)
            if points:  # a tuned variant: one student per setting of its grid
                out += [JobSpec(setting_job(exp, v, p), exp.seeds, train_config(cfg, exp, v, p)) for p in points]
                continue
            name = job_name(exp, v)
            if name == exp.hinton_run:
                continue  # the section's own run
            temp = exp.temperature_from if needs_chosen_temperature(exp, v) else None
            out.append(JobSpec(name, exp.seeds, train_config(cfg, exp, v), temp))
    return out


def grid(cfg: dict, variant: str) -> list[dict]:
    """The settings a variant is tuned over in every experiment (`variant_grids[variant]`, {parameter: [values]}):
    their cartesian product, in the profile's order; [] for a variant without a grid (it runs once, as today)."""
    g = cfg.get("variant_grids", {}).get(variant) or {}
    return [dict(zip(g, values)) for values in itertools.product(*g.values())] if g else []


def setting_name(point: dict) -> str:
    """A grid point as a folder name and a table label: `beta=8`, `tau=1,beta=2`."""
    return ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in point.items())


def setting_job(experiment: Experiment, variant: str, point: dict) -> str:
    """The run of one setting of a tuned variant in an experiment."""
    return f"variants/{experiment.name}/{variant}/{setting_name(point)}"


def by_name(cfg: dict) -> dict[str, Experiment]:
    return {e.name: e for e in experiments(cfg)}


def job_name(experiment: Experiment, variant: str) -> str:
    """The run of a variant in an experiment; `hinton` is the section's own run where the experiment has one."""
    if variant == "hinton" and experiment.hinton_run is not None:
        return experiment.hinton_run
    return f"variants/{experiment.name}/{variant}"


def needs_chosen_temperature(experiment: Experiment, variant: str) -> bool:
    return experiment.temperature_from is not None and "temperature" in losses.get(variant).defaults


def teacher_job(experiment: Experiment, variant: str) -> str | None:
    """The job whose cached train_logits a teacher="self" variant reads (the experiment's `hard` run)."""
    return job_name(experiment, "hard") if losses.get(variant).teacher == "self" else None


def train_config(cfg: dict, experiment: Experiment, variant: str, point: dict | None = None) -> dict:
    """The `kdbench.engine.train` config of one variant in one experiment (of one setting `point` of its grid, for a
    tuned variant: its own defaults, then `variant_params[variant]`, then the point; never the experiment's
    temperature, since a tuned variant's setting is its own, chosen on validation)."""
    v = losses.get(variant)
    base = experiment.base
    exp_params = {} if point is not None else base.get("variant_params", {})
    params = {k: exp_params[k] for k in ("temperature", "hard_weight") if k in v.defaults and k in exp_params}
    params.update(cfg.get("variant_params", {}).get(variant, {}))
    params.update(point or {})
    out = {**base, "variant": variant, "variant_params": params,
           "variant_modules": losses.modules_of(variant),
           "teacher_logits": None, "teacher_model": None, "teacher_members": None}
    live = bool(base.get("mixup"))  # mixed inputs: the teacher nets run on them, no cache can serve them
    if v.teacher == "self":
        runs = layout.runs(cfg["profile"])
        own = teacher_job(experiment, variant)
        out.update({"teacher_model": str(layout.model(runs, own))} if live else
                   {"teacher_logits": str(layout.train_logits(runs, own))}, teacher_pairing="paired")
    elif v.needs_teacher and live:
        out.update(teacher_model=experiment.teacher_model, teacher_members=experiment.teacher_members)
    elif v.needs_teacher:
        out["teacher_logits"] = experiment.teacher_logits
    if v.features:
        out.update(teacher_model=experiment.teacher_model, teacher_members=experiment.teacher_members)
    # teacher keys a variant does not use stay out of its config rather than appear as null, so that a job's params
    # (and whether it reruns) do not change when the plan learns keys the job never reads
    return {k: val for k, val in out.items() if val is not None or k in base}


def choice_config(cfg: dict, experiment: Experiment) -> dict:
    """What an experiment's temperature choice reads, and nothing else (a new variant or a table setting must not
    redo it, nor the runs that wait for it): its seeds, the section that makes the choice and what that section
    compares (its `choice_spec`)."""
    spec = sections.get(experiment.section).choice_spec(cfg, experiment.choice)
    return {"experiment": experiment.name, "seeds": list(experiment.seeds), "section": experiment.section, **spec}


def choice_inputs(spec: dict, runs: Path | str) -> list[Path]:
    """The files `choose_temperature` reads for a `choice_config` spec (its section says which)."""
    return sections.get(spec["section"]).choice_inputs(spec, runs)


def choose_temperature(spec: dict, runs: Path | str) -> dict:
    """The temperature an experiment's students use (`choice_config` spec), by its section's rule on validation:
    MNIST's fewest final-epoch validation errors over its sweep, the ensembles' one-standard-error rule."""
    return {"experiment": spec["experiment"], **sections.get(spec["section"]).choose_temperature(spec, runs)}


def _value(rec: dict, metric: str) -> float:
    return rec["test_errors"] if metric == "test_errors" else 100.0 * rec["test_accuracy"]


def val_error_pct(rec: dict) -> float:
    """A run's validation error % at the epoch it kept (its last, or its best-validation epoch with `keep_best`)."""
    return 100.0 * rec["val_errors"][rec["final_epoch"] - 1] / rec["val_examples"]


def choose_setting(tuned: dict, seeds: list[int], runs: Path | str) -> tuple[str, dict[str, float]]:
    """A tuned variant's setting in one experiment, by the rule its experiment uses for hinton's temperature, on
    the runs' validation errors (their records; test never looked at). `tuned`: {"settings": {name: job}, "default":
    the setting equal to the variant's published defaults or None, "rule"}. Rule "mean" (the MNIST sweep's): the
    fewest validation errors, mean over seeds (a tie: the earlier setting of the grid). Rule "one_se" (the ensembles
    section's): validation error pooled over seeds; every setting within one binomial standard error of the best
    ties, and of the tied the published default wins, else the best. Returns the choice and each setting's
    validation error %."""
    scores, pooled = {}, 0
    for name, job in tuned["settings"].items():
        recs = [read_json(layout.metrics(runs, job, s)) for s in seeds]
        scores[name] = sum(val_error_pct(r) for r in recs) / len(recs)
        pooled = sum(r["val_examples"] for r in recs)
    best = min(scores, key=lambda k: scores[k])  # dicts keep the grid's order: a tie goes to the earlier setting
    if tuned["rule"] == "one_se":
        p = scores[best] / 100.0
        se = 100.0 * math.sqrt(p * (1 - p) / pooled) if pooled else 0.0
        if tuned["default"] in scores and scores[tuned["default"]] <= scores[best] + se:
            best = tuned["default"]
    return best, scores


def _tuned(cfg: dict, exp: Experiment, variant: str) -> dict:
    """What `choose_setting` reads of a tuned variant in an experiment (see there)."""
    v, points = losses.get(variant), grid(cfg, variant)
    default = [setting_name(p) for p in points if all(v.defaults.get(k) == x for k, x in p.items())]
    return {"settings": {setting_name(p): setting_job(exp, variant, p) for p in points},
            "default": default[0] if default else None, "rule": "mean" if exp.table == "mnist" else "one_se",
            "grid": {k: list(x) for k, x in cfg["variant_grids"][variant].items()}}


def table_config(cfg: dict, tables: tuple[str, ...] = tuple(TABLES), name: str = "variants") -> dict:
    """What the variants' tables read of a profile: variants and each experiment's name, group, metric, seeds and
    runs, so that a recipe or a table setting elsewhere does not redo them. `tables` picks groups of experiments
    (`mnist_section` builds `variants_mnist.*` from the MNIST students alone); `name` names the output files."""
    names = list(dict.fromkeys(["hinton", *cfg["variants"]]))
    chosen = [e for e in experiments(cfg) if e.table in tables or (e.table not in TABLES and tables == tuple(TABLES))]
    out = {"profile": cfg["profile"], "variants": cfg["variants"], "name": name,
           "experiments": [{"name": e.name, "table": e.table, "metric": e.metric, "seeds": list(e.seeds),
                            "jobs": {v: job_name(e, v) for v in names if not grid(cfg, v) and in_scope(cfg, e, v)}}
                           for e in chosen]}
    tuned = [v for v in names if grid(cfg, v)]
    for spec, e in zip(out["experiments"], chosen):  # keys only where needed: a built-in spec reads as before
        if tuned:
            spec["tuned"] = {v: _tuned(cfg, e, v) for v in tuned if in_scope(cfg, e, v)}
        if e.table not in TABLES:  # a user's section's group: its own title
            spec["title"] = e.title or e.table
    return out


def table(spec: dict, runs: Path | str) -> pd.DataFrame:
    """Tidy rows (experiment, variant, the seeds' metric, paired difference to hinton with its 95% interval) from
    `table_config`'s spec; `sources` and their `kdbench.records.run_identity` (`kdbench check` compares them)."""
    rows = []
    for exp in spec["experiments"]:
        ref = {s: _value(read_json(layout.metrics(runs, exp["jobs"]["hinton"], s)), exp["metric"])
               for s in exp["seeds"]}
        for variant in spec["variants"]:
            tuned = exp.get("tuned", {}).get(variant)
            if tuned is None and variant not in exp["jobs"]:
                continue  # not in the variant's scope: no run, no row
            setting, scores = choose_setting(tuned, exp["seeds"], runs) if tuned else (None, None)
            job = tuned["settings"][setting] if tuned else exp["jobs"][variant]
            paths = [layout.metrics(runs, job, s) for s in exp["seeds"]]
            recs = [read_json(p) for p in paths]
            vals = [_value(r, exp["metric"]) for r in recs]
            mean, std = mean_std(vals)
            d_mean, d_std, note = paired_note([v - ref[s] for s, v in zip(exp["seeds"], vals)])
            low, high = ci95(d_mean, d_std, len(vals))
            rows.append({"experiment": exp["name"], "table": exp["table"], "variant": variant,
                         "metric": exp["metric"], "mean": mean, "std": std, "n_seeds": len(vals),
                         "diff_vs_hinton_mean": d_mean, "diff_vs_hinton_std": d_std, "diff_ci95_low": low,
                         "diff_ci95_high": high, "significance": "reference" if variant == "hinton" else note,
                         "temperature": recs[0]["config"]["variant_params"].get("temperature", math.nan),
                         **({"setting": setting or "", "grid": _grid_text(tuned["grid"]) if tuned else "",
                             "val_error_pct_by_setting": json.dumps(scores) if tuned else ""}
                            if exp.get("tuned") else {}),
                         "sources": ";".join(str(p) for p in paths),
                         "sources_sha256": ";".join(str(run_identity(p)) for p in paths)})
    return pd.DataFrame(rows)


def _grid_text(g: dict) -> str:
    return "; ".join(f"{k} in {{{', '.join(f'{x:g}' for x in xs)}}}" for k, xs in g.items())


def outcome(row) -> str:
    """A variant's result against `hinton` in one experiment: "beats", "loses" or "ties", decided by whether the
    paired 95% interval of its difference excludes 0, in the metric's better direction (fewer errors, more
    accuracy); no interval (one seed) is a tie."""
    low, high = row["diff_ci95_low"], row["diff_ci95_high"]
    if math.isnan(low) or math.isnan(high) or low <= 0 <= high:
        return "ties"
    better = high < 0 if row["metric"] == "test_errors" else low > 0
    return "beats" if better else "loses"


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant (hinton left out): in how many experiments it beats, ties and loses to hinton (`outcome`)."""
    rows = []
    for variant, sub in df[df.variant != "hinton"].groupby("variant", sort=False):
        counts = sub.apply(outcome, axis=1).value_counts()
        rows.append({"variant": variant, "experiments": len(sub),
                     **{k: int(counts.get(k, 0)) for k in ("beats", "ties", "loses")}})
    return pd.DataFrame(rows, columns=["variant", "experiments", "beats", "ties", "loses"])


def verdict_lines(df: pd.DataFrame) -> list[str]:
    """One line per variant: the leaderboard in words."""
    return [f"`{r.variant}`: beats `hinton` in {r.beats} of {r.experiments} experiments, ties in {r.ties}, loses in "
            f"{r.loses} (a paired 95% interval that excludes 0 decides)" for r in leaderboard(df).itertuples()]


def _header(df: pd.DataFrame, exps: list[str]) -> list[str]:
    head = []
    for e in exps:
        temps = df[(df.experiment == e) & (df.variant == "hinton")].temperature
        head.append(f"{e} (T={temps.iloc[0]:g})" if len(temps) and not math.isnan(temps.iloc[0]) else e)
    return head


def markdown(df: pd.DataFrame, cfg: dict) -> str:
    lines = ["# KD variants beside Hinton et al.'s distillation", "",
             "Mean ± std over the seeds of each experiment's section (listed under each title); in brackets the paired "
             "difference to `hinton` on the same seeds, "
             "its 95% t interval and a paired t-test at the 5% level. Every variant reuses its experiment's cached "
             "teacher logits; `born_again` learns from the `hard` run of the same experiment (a trained copy of its "
             "own architecture); `fitnets` also reads the hidden features of its seed's teacher net.", ""]
    titles = {**TABLES, **{e["table"]: e["title"] for e in cfg["experiments"] if "title" in e}}
    for table, title in titles.items():
        sub = df[df.table == table]
        if sub.empty:
            continue
        exps = list(dict.fromkeys(sub.experiment))
        digits = 1 if sub.metric.iloc[0] == "test_errors" else 2
        seeds = sorted({s for e in cfg["experiments"] if e["table"] == table for s in e["seeds"]})
        lines += [f"## {title}", "", f"Seeds {seeds}.", "", "| variant | " + " | ".join(_header(sub, exps)) + " |",
                  "|---|" + "---|" * len(exps)]
        missing = False
        for variant in cfg["variants"]:
            cells = []
            for e in exps:
                hit = sub[(sub.experiment == e) & (sub.variant == variant)]
                if hit.empty:
                    cells.append(NOT_RUN)
                    missing = True
                    continue
                r = hit.iloc[0]
                cell = fmt(r["mean"], r["std"], digits)
                if variant != "hinton":
                    cell += f" ({_diff(r, digits)}; {r.significance})"
                if r.get("setting"):
                    cell += f", `{r.setting}`"
                cells.append(cell)
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines += ["", *_tuned_notes(sub, table)]
        if missing:
            lines += [f"{NOT_RUN}: the variant does not run in that experiment (the profile's `variant_scope`).", ""]
    name = cfg.get("name", "variants")
    lines += [f"![variants]({name}.png)", ""]
    board = leaderboard_markdown(df)
    if board:
        lines += [*board, f"![leaderboard]({name}_leaderboard.png)", ""]
    return "\n".join(lines)


def _diff(r, digits: int) -> str:
    low, high = r.diff_ci95_low, r.diff_ci95_high
    interval = "" if math.isnan(low) else f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    return f"{r.diff_vs_hinton_mean:+.{digits}f}{interval}"


def _tuned_notes(sub: pd.DataFrame, table: str) -> list[str]:
    """Under a table: each tuned variant's grid and how its setting (`after the cell`) was chosen."""
    if "setting" not in sub or not sub.setting.astype(bool).any():
        return []
    rule = ("the fewest validation errors, mean over seeds (the sweep's rule for hinton's temperature)"
            if table == "mnist" else "the lowest validation error pooled over seeds, a setting within one binomial "
            "standard error of it tying and the published default winning a tie (the rule of hinton's temperature)")
    grids = {r.variant: r.grid for r in sub.itertuples() if r.setting}
    out = [f"Tuned variants (setting after the cell, chosen per experiment by {rule}; every setting of the grid is "
           f"trained on the same seeds): " + "; ".join(f"`{v}` over {g}" for v, g in grids.items()) + "."]
    if table == "mnist":
        out.append("Where the paper fixes the temperature (the 800-800 student at T=20), `hinton` keeps it and each "
                   "tuned variant uses its own validation-chosen setting instead.")
    return [*out, ""]


def leaderboard_markdown(df: pd.DataFrame) -> list[str]:
    """Per experiment, every variant's paired difference to `hinton` with its 95% interval, best first (fewer errors,
    more accuracy), and one verdict line per variant (`verdict_lines`)."""
    others = df[df.variant != "hinton"]
    if others.empty:
        return []
    lines = ["## Leaderboard against `hinton`", "",
             "Per experiment, each variant's paired difference to `hinton` (variant − hinton on the same seeds; "
             "errors for MNIST, accuracy points for Tables 1 and 5) with its 95% interval, best first; `beats` or "
             "`loses` where the interval excludes 0, else `ties`.", "",
             "| experiment | " + " | ".join(f"{i + 1}." for i in range(others.groupby('experiment').size().max()))
             + " |", "|---|" + "---|" * int(others.groupby("experiment").size().max())]
    for e, sub in others.groupby("experiment", sort=False):
        digits = 1 if sub.metric.iloc[0] == "test_errors" else 2
        sign = -1.0 if sub.metric.iloc[0] == "test_errors" else 1.0
        ranked = sub.assign(gain=sign * sub.diff_vs_hinton_mean).sort_values("gain", ascending=False, kind="stable")
        lines.append(f"| {e} | " + " | ".join(f"`{r.variant}` {_diff(r, digits)} {outcome(r._asdict())}"
                                              for r in ranked.itertuples()) + " |")
    return [*lines, "", *(f"- {line}" for line in verdict_lines(df)), ""]


def write(spec: dict, runs: Path, out: Path, figures: bool = True, **_) -> str:
    """The section's outputs from `table_config`'s spec: <name>.csv, <name>.md, <name>.png and
    <name>_leaderboard.png (name: variants; the figures only with `figures`)."""
    df, name = table(spec, runs), spec.get("name", "variants")
    aggregate.write_csv(df, out / f"{name}.csv")
    atomic_write_bytes(out / f"{name}.md", markdown(df, spec).encode())
    if figures:
        plots.variants(df, out / f"{name}.png")
        plots.variants_leaderboard(df, out / f"{name}_leaderboard.png")
    return f"{name}: {len(df)} rows -> {out}"
