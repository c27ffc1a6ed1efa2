"""The paper's section 3 (MNIST) as data: which systems are trained with which settings, and how their run records
become the section's table cells.

Systems: `teacher` (784-1200-1200-10, dropout, max-norm, jitter), `baseline` (784-800-800-10, hard targets, no
regularization), `distilled_T20` (the baseline's architecture on the teacher's cached soft targets at T=20),
`sweep_w{W}_T{T}` (width x temperature), `omit3` (transfer set without any 3) and `only78` (only the 7s and 8s),
the last two followed by the bias correction of `kdbench.sections.bias`.
"""
from __future__ import annotations

import math
from pathlib import Path

from kdbench import layout
from kdbench.data import registry as data_registry
from kdbench.records import atomic_write_bytes
from kdbench.report import aggregate
from kdbench.report import figures as plots
from kdbench.report.aggregate import Cell, fmt, fmt_claim, read_json, share_cell
from kdbench.sections import Experiment, JobSpec

# the section registry (kdbench.sections): what `rule all` asks of it, and whether it adds to summary.csv
OUTPUTS = ["mnist.md", "mnist_sweep.png", "mnist_transfer.png"]
ORDER = 1  # its place in the suite's summary and targets (kdbench.sections)
SUMMARY = True

SECTION, TABLE = "mnist", "sec3"
OMIT3_CLASSES = [0, 1, 2, 4, 5, 6, 7, 8, 9]
ONLY78_CLASSES = [7, 8]


def sweep_points(cfg: dict) -> dict[str, tuple[int, float]]:
    """{sweep system: (hidden width, temperature)}: the sweep's grid, named once (no name is parsed back)."""
    sw = cfg["mnist"]["sweep"]
    return {sweep_name(w, t): (int(w), float(t)) for w in sw["widths"] for t in sw["temperatures"]}


def sweep_systems(cfg: dict) -> list[str]:
    return list(sweep_points(cfg))


def sweep_name(width: int, temperature: float) -> str:
    return f"sweep_w{width}_T{temperature:g}"


def systems(cfg: dict) -> list[str]:
    return ["teacher", "baseline", "distilled_T20", "omit3", "only78"] + sweep_systems(cfg)


def train_config(cfg: dict, system: str, teacher_logits: str | None = None) -> dict:
    """The `kdbench.engine.train` config of one system under the profile `cfg`."""
    m = cfg["mnist"]
    base = {"dataset": "mnist", "val_size": m["val_size"], "val_seed": m.get("val_seed", 0), **m.get("common", {})}
    if system in ("teacher", "baseline"):
        return {**base, **m[system]}
    student = {**base, **m["distilled"], "teacher_logits": teacher_logits, "teacher_pairing": "paired"}
    if system == "distilled_T20":
        return student
    if system in ("omit3", "only78"):
        classes = OMIT3_CLASSES if system == "omit3" else ONLY78_CLASSES
        return {**student, **m[system].get("train", {}), "transfer_classes": classes}
    if system in sweep_points(cfg):
        width, temp = sweep_points(cfg)[system]
        sw, data = m["sweep"], data_registry.get("mnist")
        params = {**m["distilled"].get("variant_params", {}), **sw["train"].get("variant_params", {}),
                  "temperature": temp}
        return {**student, **sw["train"], "widths": [data.input_dim, width, width, data.num_classes],
                "variant_params": params}
    raise ValueError(f"unknown MNIST system {system!r}; known: {systems(cfg)}")


def jobs(cfg: dict) -> list[JobSpec]:
    """Its systems on the profile's seeds; the students read the teacher's cached logits."""
    teacher = str(layout.train_logits(layout.runs(cfg["profile"]), "teacher"))
    return [JobSpec(s, tuple(cfg["seeds"]), train_config(cfg, s, None if s in ("teacher", "baseline") else teacher))
            for s in systems(cfg)]


def distillation_experiments(cfg: dict) -> list[Experiment]:
    """The distilled 800-800 student at T=20 (its `hinton` run is the section's own) and the W-unit student at the
    temperature the sweep found best on validation (W: `variant_experiments.mnist_bestT_width`)."""
    runs, results = layout.runs(cfg["profile"]), layout.results(cfg["profile"])
    teacher_logits, teacher_model = str(layout.train_logits(runs, "teacher")), str(layout.model(runs, "teacher"))
    width = cfg["variant_experiments"]["mnist_bestT_width"]
    best, seeds = f"mnist_w{width}_bestT", tuple(cfg["seeds"])
    first = sweep_name(width, cfg["mnist"]["sweep"]["temperatures"][0])
    return [Experiment("mnist_distilled_T20", "mnist", train_config(cfg, "distilled_T20", teacher_logits),
                       teacher_logits, teacher_model, None, hinton_run="distilled_T20", seeds=seeds),
            Experiment(best, "mnist", train_config(cfg, first, teacher_logits), teacher_logits, teacher_model, None,
                       temperature_from=str(layout.chosen_temperature(results, best)), choice={"width": width},
                       section="mnist", seeds=seeds)]


def choice_spec(cfg: dict, choice: dict) -> dict:
    """What the temperature choice of a W-unit student reads besides its seeds: the sweep's temperatures."""
    return {"choice": choice, "mnist": {"sweep": {"temperatures": cfg["mnist"]["sweep"]["temperatures"]}}}


def choice_inputs(spec: dict, runs) -> list[Path]:
    """The run records of the sweep's W-unit students, every temperature and seed."""
    return [layout.metrics(runs, sweep_name(spec["choice"]["width"], t), s)
            for t in spec["mnist"]["sweep"]["temperatures"] for s in spec["seeds"]]


def choose_temperature(spec: dict, runs) -> dict:
    """The sweep's temperature with the fewest validation errors at its final epoch (mean over seeds; a tie: the
    lower temperature) for the width of `spec`."""
    width, scores = spec["choice"]["width"], {}
    for t in spec["mnist"]["sweep"]["temperatures"]:
        errs = [read_json(layout.metrics(runs, sweep_name(width, t), s))["val_errors"][-1] for s in spec["seeds"]]
        scores[t] = sum(errs) / len(errs)
    best = min(scores, key=lambda t: (scores[t], t))
    return {"width": width, "temperature": best, "val_errors_by_temperature": {f"{t:g}": e for t, e in scores.items()}}


def bias_settings(cfg: dict, system: str) -> dict:
    s = cfg["mnist"][system]
    classes = [3] if system == "omit3" else ONLY78_CLASSES
    return {"classes": classes, "grid": [float(x) for x in s["shift_grid"]], "paper_shift": float(s["paper_shift"])}


def cells(cfg: dict, runs: Path) -> list[Cell]:
    """Every cell of the section from the run records under `runs` (runs/<system>/seed<S>/metrics.json and
    runs/<system>/bias.json)."""
    seeds = cfg["seeds"]

    def metrics(system):
        return [(s, read_json(p), str(p)) for s in seeds for p in [layout.metrics(runs, system, s)]]

    def cell(system, metric, unit, values):
        return Cell(SECTION, TABLE, system, metric, unit, values)

    out = []
    errs = {}
    for system in ["teacher", "baseline", "distilled_T20"] + sweep_systems(cfg):
        recs = metrics(system)
        errs[system] = {s: r["test_errors"] for s, r, _ in recs}
        out.append(cell(system, "test_errors", "count", [(s, r["test_errors"], src) for s, r, src in recs]))
    # the share of the baseline -> teacher gap (in errors) the distilled net closes: the ratio of seed means
    gap = [(s, errs["distilled_T20"][s], errs["baseline"][s], errs["teacher"][s], src)
           for s, _, src in metrics("distilled_T20")]
    out.insert(3, share_cell(SECTION, TABLE, "distilled_T20", "gap_closed_pct", gap))

    for system in ("omit3", "only78"):
        path = layout.bias(runs, system)
        per_seed = read_json(path)["members"]
        for variant, key in (("raw", "raw"), ("bias_val", "val_chosen"), ("bias_paper", "paper")):
            name = f"{system}_{variant}"
            if system == "omit3":
                out.append(cell(name, "test_errors", "count",
                                [(r["seed"], r[key]["errors"], str(path)) for r in per_seed]))
                out.append(cell(name, "test_errors_on_3", "count",
                                [(r["seed"], r[key]["per_class_errors"][3], str(path)) for r in per_seed]))
            else:
                out.append(cell(name, "test_error_pct", "pct",
                                [(r["seed"], 100.0 * (1 - r[key]["accuracy"]), str(path)) for r in per_seed]))
            if variant == "bias_val":
                out.append(cell(name, "bias_shift", "logit",
                                [(r["seed"], r["val_shift"], str(path)) for r in per_seed]))
    return out


def labels(cfg: dict) -> dict[str, str]:
    """Row labels of the Markdown table, with the architectures this profile really trained."""
    m = cfg["mnist"]
    arch = lambda key: "-".join(str(w) for w in m[key]["widths"])
    return {
        "teacher": f"Teacher {arch('teacher')}, dropout + max-norm + jitter",
        "baseline": f"Baseline {arch('baseline')}, hard targets, no regularization",
        "distilled_T20": f"Distilled {arch('distilled')}, soft targets at "
                         f"T={m['distilled'].get('variant_params', {}).get('temperature', 20):g}",
        "omit3_raw": "Transfer set without 3s",
        "omit3_bias_val": "  + bias of 3 raised (shift chosen on validation)",
        "omit3_bias_paper": f"  + bias of 3 raised by the paper's {m['omit3']['paper_shift']:+g}",
        "only78_raw": "Transfer set of only 7s and 8s",
        "only78_bias_val": "  + biases of 7, 8 lowered (shift chosen on validation)",
        "only78_bias_paper": f"  + biases of 7, 8 shifted by the paper's {m['only78']['paper_shift']:+g}",
    }


def run_facts(cfg: dict, runs: Path) -> dict:
    """Where and how long: devices, commits and summed wall time of the section's training jobs."""
    recs = [read_json(layout.metrics(runs, s, cfg["seeds"][0])) for s in systems(cfg)]
    return {"devices": sorted({r["device"] for r in recs}), "commits": sorted({r["git_commit"] for r in recs}),
            "wall_seconds": sum(r["wall_seconds"] for r in recs), "jobs": len(recs),
            "torch": sorted({r["versions"]["torch"] for r in recs})}


def markdown(summary, cfg: dict, profile: str, facts: dict | None = None) -> str:
    """The section's paper-vs-ours tables as the paper would print them (it printed them in prose)."""
    rows = summary[summary.section == SECTION]
    n = len(cfg["seeds"])
    lines = [f"# MNIST (paper section 3), profile `{profile}`", "",
             f"Mean ± std over {n} seeds; every value is traceable to its runs in `provenance.csv`. "
             "The paper reports single runs and tuned its bias shifts on the test set; ours are chosen on a "
             "validation split held out of the training set.", ""]
    if facts:
        lines += [f"Trained on {', '.join(facts['devices'])} (torch {', '.join(facts['torch'])}); "
                  f"{facts['jobs']} training jobs took {facts['wall_seconds'] / 60:.1f} min of wall time in all; "
                  f"code at commit {', '.join(facts['commits'])}.", ""]
    lines += ["| System | Metric | Paper | Ours [95% interval] |", "|---|---|---|---|"]
    names = labels(cfg)
    for _, r in rows[~rows.system.str.startswith("sweep_")].iterrows():
        paper = "–" if math.isnan(r.paper) else f"{r.paper:g}"
        lines.append(f"| {names.get(r.system, r.system)} | {r.metric} | {paper} | {fmt_claim(r)} |")
    sw = cfg["mnist"]["sweep"]
    lines += ["", "## Width × temperature (test errors)", "",
              "The paper gives no counts: with ≥300 units per layer all T above 8 gave fairly similar results; "
              "with 30 units T in 2.5–4 worked significantly better than higher or lower T.", "",
              "| hidden units | " + " | ".join(f"T={t:g}" for t in sw["temperatures"]) + " |",
              "|---|" + "---|" * len(sw["temperatures"])]
    for w in sw["widths"]:
        vals = []
        for t in sw["temperatures"]:
            r = rows[(rows.system == sweep_name(w, t)) & (rows.metric == "test_errors")].iloc[0]
            vals.append(fmt(r["mean"], r["std"]))
        lines.append(f"| {w} | " + " | ".join(vals) + " |")
    lines += ["", "![test errors vs temperature](mnist_sweep.png)", "",
              "![errors per class, transfer sets](mnist_transfer.png)", ""]
    return "\n".join(lines)


def write(cfg: dict, runs: Path, out: Path, paper: dict, figures: bool = True, **_) -> str:
    """The section's outputs: mnist_summary.csv, its provenance, mnist.md, mnist_sweep.png, mnist_transfer.png (the
    figures only with `figures`: `kdbench check` re-derives the tables alone)."""
    summary = aggregate.write_tables(cells(cfg, runs), paper, out, "mnist")
    atomic_write_bytes(out / "mnist.md", markdown(summary, cfg, cfg["profile"], run_facts(cfg, runs)).encode())
    if not figures:
        return f"mnist: {len(summary)} summary rows -> {out}"
    sw = cfg["mnist"]["sweep"]
    plots.sweep(summary, sw["widths"], sw["temperatures"], sweep_name, out / "mnist_sweep.png")
    plots.transfer([("transfer set without 3s", read_json(layout.bias(runs, "omit3"))["members"]),
                    ("transfer set of only 7s and 8s", read_json(layout.bias(runs, "only78"))["members"])],
                   out / "mnist_transfer.png")
    return f"mnist: {len(summary)} summary rows -> {out}"
