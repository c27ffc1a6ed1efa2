"""Ensembles, their distillation into one net (the paper's Table 1) and soft targets as a regularizer (Table 5).

What this file achieves: for every dataset of the profile's `ensembles` block (`speech`, `speech_unseen` frame
classification, `fashion_mnist` images) it defines the training configs of

  - `ensemble`: S x M single nets (S = the section's seeds: `ensembles.seeds`, else the profile's; M members each)
    trained as one batched model; member m of ensemble s differs only in its init and data order
    (seed 1000 + 100 s + m). Its members are the baselines;
  - `distilled_T{T}`: one net of the members' size per seed s, distilled from ensemble s's soft targets
    (arithmetic mean of the members' tempered probabilities, hinton loss); T is chosen on validation;
  - `base3` / `soft3`: the paper's Table 5 protocol: the baseline net on a seeded 3% of the training examples as they
    are, on hard targets with early stopping, and on the cached soft targets of the 100%-data net of seed s (member 0
    of ensemble s) run to the end. These rows stand beside the paper's numbers;
  - `base3_mixup` / `soft3_mixup` (only with `fraction.mixup`): the same two nets on mixup of their 3%, the soft
    net's teacher labelling every mixed input live: the suite's addition, in rows of their own;

and from the runs' logits it computes the tables: mean +- std over seeds of test accuracy (frame accuracy for
speech), utterance error for speech (kdbench.data.speech.utterance_errors), arithmetic and geometric ensemble means,
the share of the ensemble's gain a distilled net keeps, and the share of the 3%-vs-100% gap soft targets recover
(both `kdbench.report.aggregate.share_cell`: ratios of seed means with a paired interval).

Choices are made on validation only: the distillation temperature (`row_temperature`: the lowest validation
error pooled over seeds, where candidates within one binomial standard error of the best tie and the tie goes to
the paper's T=2) and Table 1's main row (`main_row`: of the rows on the paper's split, the one whose ensemble gains
most over its members on validation).
"""
from __future__ import annotations

import io
import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import torch

from kdbench import layout
from kdbench.data import registry as data_registry
from kdbench.data import speech
from kdbench.records import atomic_write_bytes, run_identity
from kdbench.report import aggregate
from kdbench.report import figures as plots
from kdbench.report.aggregate import Cell, fmt_claim, fmt_paper, fmt_row, read_json, share_cell
from kdbench.sections import Experiment, JobSpec

# the section registry (kdbench.sections): what `rule all` asks of it, and whether it adds to summary.csv
OUTPUTS = ["ensembles.md", "ensembles.png"]
ORDER = 3  # its place in the suite's summary and targets (kdbench.sections)
SUMMARY = True

TABLE1, TABLE5 = "table1", "table5"
SPEECH = tuple(speech.SPLITS)
PAPER_TEMPERATURE = 2.0  # §4: T=2 is the paper's choice of [1, 2, 5, 10] for Table 1
PAPER_SPLIT = "speech"  # the rows reading this dataset stand beside the paper's Table 1 and 5 numbers
UNDERIVED = "\x00"  # marks a Markdown line whose values only uncommitted files hold (markdown_from_committed)
FACTS = "ensembles_facts.json"  # each row's facts beside its summary rows: chosen T, validation errors, size curves
MIXUP = "_mixup"  # suffix of the 3% nets trained on mixup (the suite's addition, never beside the paper's numbers)


def datasets(cfg: dict) -> list[str]:
    """The section's rows: each names a dataset, or reads the one its `data` key names (e.g. narrower nets on a
    split that has a row of its own)."""
    return list(cfg["ensembles"]["datasets"])


def data_of(cfg: dict, row: str) -> str:
    """The dataset a row of the section reads: its `data` key, else its own name."""
    return (cfg["ensembles"]["datasets"][row] or {}).get("data", row)


def seeds(cfg: dict) -> list[int]:
    """The section's seeds: its own `seeds` if set (ten-member ensembles of small nets afford more), else the
    profile's. Every system of the section (ensembles, distilled nets, 3% nets) and every variant's student of its
    experiments trains on them."""
    return list(cfg["ensembles"].get("seeds") or cfg["seeds"])


def member_seed(seed: int, m: int) -> int:
    return 1000 + 100 * seed + m


def ensemble_seeds(cfg: dict) -> list[int]:
    return [member_seed(s, m) for s in seeds(cfg) for m in range(cfg["ensembles"]["members"])]


def single_teacher_members(cfg: dict) -> list[int]:
    """Positions (in the ensemble model) of each seed's 100%-data net: member 0 of ensemble s."""
    return [i * cfg["ensembles"]["members"] for i in range(len(seeds(cfg)))]


def systems(cfg: dict) -> list[str]:
    mixup = [f"base3{MIXUP}", f"soft3{MIXUP}"] if cfg["ensembles"]["fraction"].get("mixup") else []
    return ["ensemble"] + list(distilled_temperatures(cfg)) + ["base3", "soft3"] + mixup


def distilled_name(t: float) -> str:
    return f"distilled_T{t:g}"


def distilled_temperatures(cfg: dict) -> dict[str, float]:
    """{distilled system: its temperature}: named once from the profile, never parsed back out of the name."""
    return {distilled_name(t): float(t) for t in cfg["ensembles"]["distilled"]["temperatures"]}


def teacher_logits_of(system: str) -> str | None:
    """Which of the ensemble's cached logits (`kdbench.layout.ensemble_teacher`) a system reads: the whole ensemble
    ("ensemble"), one net per seed ("single"), or none."""
    if system.startswith("distilled_T"):
        return "ensemble"
    if system == "soft3":  # soft3_mixup's teacher runs live on the mixed inputs (`teacher_model`)
        return "single"
    return None


def train_config(cfg: dict, dataset: str, system: str, teacher_logits: str | None,
                 teacher_model: str | None = None) -> dict:
    """The `kdbench.engine.train` config of one system on one dataset. The `*_mixup` 3% nets train on mixed inputs
    (`fraction.mixup`), and the soft-target one's teacher (member 0 of the seed's ensemble, `teacher_model`) runs on
    them instead of its cached logits; `base3` and `soft3` train on the 3% as they are, as the paper's did."""
    e = cfg["ensembles"]
    own = {k: v for k, v in (e["datasets"][dataset] or {}).items() if k != "data"}
    base = {**e["common"], **own, "dataset": data_of(cfg, dataset)}
    if system == "ensemble":
        return base
    base.pop("bootstrap", None)  # bagging makes the members differ; every other system learns from all its data
    if system.startswith("distilled_T"):
        d = e["distilled"]
        return {**base, **d["train"], "variant": "hinton", "teacher_logits": teacher_logits,
                "teacher_pairing": "grouped",
                "variant_params": {"temperature": distilled_temperatures(cfg)[system],
                                   "hard_weight": d["hard_weight"], "ensemble": "arithmetic"}}
    f = e["fraction"]
    small = {"train_fraction": f["fraction"], "fraction_seed": f["fraction_seed"]}
    if system.endswith(MIXUP):
        if not f.get("mixup"):
            raise ValueError(f"{system!r} needs ensembles.fraction.mixup")
        small["mixup"] = f["mixup"]
        system = system[:-len(MIXUP)]
    if system == "base3":
        return {**base, **f["hard"], **small, "keep_best": True}
    if system == "soft3":
        soft = f["soft"]
        params = {"temperature": soft["temperature"], "hard_weight": soft["hard_weight"]}
        teacher = ({"teacher_model": teacher_model, "teacher_members": single_teacher_members(cfg)} if "mixup" in small
                   else {"teacher_logits": teacher_logits})
        return {**base, **soft["train"], **small, "keep_best": False, "variant": "hinton", "variant_params": params,
                **teacher, "teacher_pairing": "paired"}
    raise ValueError(f"unknown ensembles system {system!r}")


def system_seeds(cfg: dict, system: str) -> list[int]:
    return ensemble_seeds(cfg) if system == "ensemble" else seeds(cfg)


def jobs(cfg: dict) -> list[JobSpec]:
    """Per row: the ensemble's members, its distilled nets (one per temperature), the 3% nets; students read the
    cached ensemble (or single-net) logits, a live teacher (mixup) the ensemble's nets."""
    runs, out = layout.runs(cfg["profile"]), []
    for ds in datasets(cfg):
        model = str(layout.model(runs, job(ds, "ensemble")))  # a live teacher's nets (Table 5 with mixup)
        for system in systems(cfg):
            which = teacher_logits_of(system)
            teacher = None if which is None else str(layout.ensemble_teacher(runs, ds, which))
            out.append(JobSpec(job(ds, system), tuple(system_seeds(cfg, system)),
                               train_config(cfg, ds, system, teacher, model)))
    return out


def distillation_experiments(cfg: dict) -> list[Experiment]:
    """Per row: Table 1's net distilled from its seed's ensemble at the temperature chosen on validation, and Table
    5's 3% net learning from the 100%-data net (the paper-protocol pair; its `hinton` run is the section's soft3)."""
    runs, results = layout.runs(cfg["profile"]), layout.results(cfg["profile"])
    out, ens_seeds, firsts = [], tuple(seeds(cfg)), single_teacher_members(cfg)
    for ds in datasets(cfg):
        ens_model = str(layout.model(runs, job(ds, "ensemble")))
        whole, single = (str(layout.ensemble_teacher(runs, ds, w)) for w in ("ensemble", "single"))
        t0 = distilled_name(cfg["ensembles"]["distilled"]["temperatures"][0])
        name = f"{ds}_distilled_bestT"
        out.append(Experiment(name, "table1", train_config(cfg, ds, t0, whole), whole, ens_model, firsts,
                              temperature_from=str(layout.chosen_temperature(results, name)),
                              choice={"dataset": ds}, section="ensembles", metric="test_accuracy_pct",
                              seeds=ens_seeds))
        out.append(Experiment(f"{ds}_soft3", "table5", train_config(cfg, ds, "soft3", single), single, ens_model,
                              firsts, hinton_run=job(ds, "soft3"), metric="test_accuracy_pct", seeds=ens_seeds))
    return out


# ---------------------------------------------------------------------------------------------------- evaluation

def combine(logits: torch.Tensor, how: str) -> torch.Tensor:
    """Log-probabilities of an ensemble from member logits (M, N, C): arithmetic or normalized geometric mean."""
    logp = torch.log_softmax(logits.float(), -1)
    if how == "arithmetic":
        return torch.logsumexp(logp, 0) - math.log(logp.shape[0])
    if how == "geometric":
        return torch.log_softmax(logp.mean(0), -1)
    raise ValueError(f"unknown ensemble mean {how!r}")


def accuracy_pct(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per member (K, N, C) -> K accuracies in percent."""
    if logits.dim() == 2:
        logits = logits.unsqueeze(0)
    return (100.0 * (logits.argmax(-1) == labels).float().mean(-1)).tolist()


class _Eval:
    """Test metrics of (K, N, C) logits of one dataset: accuracy and, for speech, utterance error."""

    def __init__(self, dataset: str, blob: dict, root: Path | str | None):
        self.dataset, self.labels = dataset, blob["test_labels"]
        self.groups = blob.get("test_groups")
        self.digits = None
        if dataset in SPEECH:
            cache = speech.load_cache(root, dataset, build_missing=False)
            self.digits = cache["utterances"][:, 0]

    def __call__(self, logits: torch.Tensor) -> dict[str, list[float]]:
        out = {"test_accuracy_pct": accuracy_pct(logits, self.labels)}
        if self.digits is not None:
            out["utterance_error_pct"] = [r["utterance_error_pct"]
                                          for r in speech.utterance_errors(logits, self.groups, self.digits)]
        return out


def job(dataset: str, system: str) -> str:
    """The plan's name of a system's training job on a dataset (its folder under runs/)."""
    return f"ensembles/{dataset}/{system}"


def _src(runs: Path, dataset: str, system: str) -> str:
    return str(layout.logits(runs, job(dataset, system)))


def _logits(runs: Path, dataset: str, system: str) -> dict:
    return torch.load(_src(runs, dataset, system), map_location="cpu", weights_only=False)


def _metrics(runs: Path, dataset: str, system: str, seed: int) -> tuple[dict, str]:
    p = layout.metrics(runs, job(dataset, system), seed)
    return read_json(p), str(p)


def row_temperature(cfg: dict, runs: Path, dataset: str) -> tuple[float, dict[float, float]]:
    """The distillation temperature of a row, chosen on validation (test never looked at): validation error pooled
    over seeds per candidate T; every candidate within one binomial standard error of the best,
    sqrt(p (1 - p) / n) on the n pooled validation examples, ties, and of the tied the paper's T wins (else the
    one nearest it on a log scale). Returns the choice and the pooled validation error of every T."""
    val, pooled = {}, 0
    for t in cfg["ensembles"]["distilled"]["temperatures"]:
        blob = _logits(runs, dataset, distilled_name(t))
        val[float(t)] = 100.0 - sum(accuracy_pct(blob["val"], blob["val_labels"])) / blob["val"].shape[0]
        pooled = blob["val"].shape[0] * blob["val"].shape[1]
    return pick_temperature(val, pooled), val


def choice_spec(cfg: dict, choice: dict) -> dict:
    """What a row's temperature choice reads besides its seeds: the candidate temperatures."""
    temperatures = cfg["ensembles"]["distilled"]["temperatures"]
    return {"choice": choice, "ensembles": {"distilled": {"temperatures": temperatures}}}


def choice_inputs(spec: dict, runs) -> list[Path]:
    """The validation logits of the row's candidate distilled students."""
    return [layout.logits(runs, job(spec["choice"]["dataset"], distilled_name(t)))
            for t in spec["ensembles"]["distilled"]["temperatures"]]


def choose_temperature(spec: dict, runs) -> dict:
    """A row's temperature for a `choice_spec` (`row_temperature`'s rule) and every candidate's pooled validation
    error %."""
    best, val = row_temperature(spec, Path(runs), spec["choice"]["dataset"])
    return {"temperature": best, "val_error_pct_by_temperature": {f"{t:g}": e for t, e in val.items()}}


def pick_temperature(val_error_pct: dict[float, float], n_pooled: int, paper_t: float = PAPER_TEMPERATURE) -> float:
    """`choose_temperature`'s rule on {T: pooled validation error %} over `n_pooled` validation examples."""
    best = min(val_error_pct.values())
    p = best / 100.0
    se = 100.0 * math.sqrt(p * (1 - p) / n_pooled) if n_pooled else 0.0
    tied = [t for t, e in val_error_pct.items() if e <= best + se]
    return min(tied, key=lambda t: (abs(math.log(t / paper_t)), val_error_pct[t], t))


def val_gain(cfg: dict, ens: dict) -> list[float]:
    """Per seed: validation accuracy of the arithmetic ensemble minus the mean of its members', in points."""
    m_count, labels = cfg["ensembles"]["members"], ens["val_labels"]
    out = []
    for i in range(len(seeds(cfg))):
        z = ens["val"][i * m_count:(i + 1) * m_count]
        members = accuracy_pct(z, labels)
        out.append(accuracy_pct(combine(z, "arithmetic"), labels)[0] - sum(members) / len(members))
    return out


def main_row(cfg: dict, gains: dict[str, list[float]]) -> str | None:
    """Table 1's main row, the one its bar judges: of the rows on the paper's split (`PAPER_SPLIT`), the one whose
    ensemble gains most over its members on validation (mean over seeds), where distillation has the most to
    keep. `gains` maps rows to `val_gain`; a row without one (kept from a summary that lacks it) is no candidate;
    None where no row reads the paper's split."""
    rows = [ds for ds in gains if gains[ds] and data_of(cfg, ds) == PAPER_SPLIT]
    return max(rows, key=lambda ds: (sum(gains[ds]) / len(gains[ds]), ds)) if rows else None


def cells(cfg: dict, runs: Path | str, root: Path | str | None = None,
          rows: list[str] | None = None) -> tuple[list[Cell], dict]:
    """Summary cells of every dataset (or of `rows`), plus facts for the Markdown (chosen T, validation errors, size
    curves)."""
    out, facts = [], {}
    for ds in datasets(cfg) if rows is None else rows:
        add = Adder(out, ds)
        ens = _logits(Path(runs), ds, "ensemble")
        ev = _Eval(data_of(cfg, ds), ens, root)
        facts[ds] = _table1(cfg, Path(runs), ds, ens, ev, add)
        facts[ds].update(_table5(cfg, Path(runs), ds, ens, ev, add))
    gains = {ds: facts[ds]["val_gain"] for ds in facts}
    facts["main_row"] = main_row(cfg, gains)
    return out, facts


class Adder:
    """Collects one row's cells: `add(table, system, metric, [(seed, value, source)])`, and `add.share(table,
    system, metric, [(seed, value, low, high, source)])` for a share (`kdbench.report.aggregate.share_cell`)."""

    def __init__(self, out: list, section: str):
        self.out, self.section = out, section

    def __call__(self, table, system, metric, values, unit="pct"):
        self.out.append(Cell(self.section, table, system, metric, unit, list(values)))

    def share(self, table, system, metric, per_seed):
        self.out.append(share_cell(self.section, table, system, metric, list(per_seed)))


def _table1(cfg: dict, runs: Path, ds: str, ens: dict, ev: _Eval, add) -> dict:
    """Single nets, arithmetic and geometric ensembles, the distilled net at the T chosen on validation."""
    m_count, sds = cfg["ensembles"]["members"], seeds(cfg)
    ens_src = _src(runs, ds, "ensemble")
    single = ev(ens["test"])  # every member
    metric_names = list(single)
    for metric in metric_names:
        add(TABLE1, "baseline", metric, [(sd, v, ens_src) for sd, v in zip(ensemble_seeds(cfg), single[metric])])
    per_seed_base = [sum(single["test_accuracy_pct"][i * m_count:(i + 1) * m_count]) / m_count
                     for i in range(len(sds))]
    combos, curves = {}, {"sizes": list(range(1, m_count + 1))}
    for how in ("arithmetic", "geometric"):
        vals = {metric: [] for metric in metric_names}
        for i in range(len(sds)):
            member_logits = ens["test"][i * m_count:(i + 1) * m_count]
            r = ev(combine(member_logits, how))
            for metric in metric_names:
                vals[metric].append(r[metric][0])
            if how == "arithmetic":
                curves[sds[i]] = [accuracy_pct(combine(member_logits[:n], how), ev.labels)[0]
                                  for n in range(1, m_count + 1)]
        combos[how] = vals
        for metric in metric_names:
            add(TABLE1, f"ensemble_{how}", metric, [(s, v, ens_src) for s, v in zip(sds, vals[metric])])
        add(TABLE1, f"ensemble_{how}", "gain_over_members_pct",
            [(s, v - b, ens_src) for s, v, b in zip(sds, vals["test_accuracy_pct"], per_seed_base)])
    gain_val = val_gain(cfg, ens)
    add(TABLE1, "ensemble_arithmetic", "val_gain_over_members_pct", [(s, g, ens_src) for s, g in zip(sds, gain_val)])
    t_best, val_err = row_temperature(cfg, runs, ds)
    dist_src = _src(runs, ds, distilled_name(t_best))
    d = ev(_logits(runs, ds, distilled_name(t_best))["test"])
    for metric in metric_names:
        add(TABLE1, "distilled", metric, [(s, v, dist_src) for s, v in zip(sds, d[metric])])
    add(TABLE1, "distilled", "chosen_temperature", [(s, t_best, dist_src) for s in sds], unit="T")
    add.share(TABLE1, "distilled", "gain_recovered_pct",
              [(s, dv, b, ea, dist_src) for s, dv, b, ea in
               zip(sds, d["test_accuracy_pct"], per_seed_base, combos["arithmetic"]["test_accuracy_pct"])])
    return {"chosen_temperature": t_best, "val_error_pct_by_T": val_err, "size_curve": curves, "val_gain": gain_val}


def _table5(cfg: dict, runs: Path, ds: str, ens: dict, ev: _Eval, add: Adder) -> dict:
    """Train and test accuracy of the 100%-data net (member 0 of each ensemble), the 3% nets on the paper's protocol
    (`baseline_3`, `soft_3`) and, where the profile adds mixup, on mixup (`baseline_3_mixup`, `soft_3_mixup`); each
    pair's share of the 3% -> 100% gap its soft-target net recovers, as a ratio of seed means for every seed."""
    sds, t5, facts = seeds(cfg), {}, {}
    suffixes = ("", MIXUP) if f"soft3{MIXUP}" in systems(cfg) else ("",)
    own = list(range(len(sds)))  # a 3% run's member k is seed k
    rows = [("baseline_100", "ensemble", single_teacher_members(cfg))]
    rows += [(f"{name}{x}", f"{run}{x}", own) for x in suffixes for name, run in (("baseline_3", "base3"),
                                                                                  ("soft_3", "soft3"))]
    for system, run, members in rows:
        blob = ens if run == "ensemble" else _logits(runs, ds, run)
        test = ev(blob["test"][members])["test_accuracy_pct"]
        run_seeds = [ensemble_seeds(cfg)[j] for j in members] if run == "ensemble" else sds
        recs = [_metrics(runs, ds, run, sd) for sd in run_seeds]
        add(TABLE5, system, "train_accuracy_pct", [(s, 100.0 * r["train_accuracy"], src)
                                                   for s, (r, src) in zip(sds, recs)])
        add(TABLE5, system, "test_accuracy_pct", [(s, v, src) for s, v, (_, src) in zip(sds, test, recs)])
        t5[system] = test
        if run.startswith("base3"):
            facts[f"{run}_epochs"] = [r["final_epoch"] for r, _ in recs]
    for suffix in suffixes:
        add.share(TABLE5, f"soft_3{suffix}", "gap_recovered_pct",
                  [(s, s3, b3, b100, _src(runs, ds, f"soft3{suffix}")) for s, s3, b3, b100 in
                   zip(sds, t5[f"soft_3{suffix}"], t5[f"baseline_3{suffix}"], t5["baseline_100"])])
    return facts


# ---------------------------------------------------------------------------------------------------- report

NAMES = {"baseline": "Baseline (single net)", "ensemble_arithmetic": "{M}x ensemble, arithmetic mean",
         "ensemble_geometric": "{M}x ensemble, geometric mean", "distilled": "Distilled single net",
         "baseline_100": "Baseline (100% of training set)", "baseline_3": "Baseline (3% of training set)",
         "soft_3": "Soft targets (3% of training set)",
         "baseline_3_mixup": "Baseline (3%, mixup)",
         "soft_3_mixup": "Soft targets (3%, mixup, teacher on each mixed input)"}
ROW_TITLES = {"speech_narrow": "Spoken digits, documented split, nets limited by their width"}


def title(row: str) -> str:
    """A row's heading: its own title, else its dataset's (a row named after a dataset), else its name."""
    if row in ROW_TITLES:
        return ROW_TITLES[row]
    return data_registry.get(row).title if row in data_registry.DATASETS else row


def _row(summary: pd.DataFrame, ds: str, table: str, system: str, metric: str) -> pd.Series | None:
    r = summary[(summary.section == ds) & (summary.table == table) & (summary.system == system)
                & (summary.metric == metric)]
    return None if r.empty else r.iloc[0]


def markdown(summary: pd.DataFrame, cfg: dict, facts: dict) -> str:
    m_count, n_seeds = cfg["ensembles"]["members"], len(seeds(cfg))
    lines = [f"# Ensembles, distillation and soft targets as a regularizer (profile `{cfg['profile']}`)", "",
             f"Mean ± std over {n_seeds} seeds (the baseline row: over all {n_seeds * m_count} single nets); derived "
             "claims also carry [their 95% interval]: a gain in points is each seed's own (paired t interval), a "
             "share is the ratio of the seed means with the paired delta-method interval "
             "(kdbench.report.aggregate.share_cell); "
             "the paper's number in parentheses where it has one (speech frames from a 2012 Android voice-search "
             "set; ours are spoken digits, see docs/DEVIATIONS.md). Accuracy of speech systems is frame accuracy; "
             "utterance error is the analog of WER.", ""]
    for ds in datasets(cfg):
        sp = data_of(cfg, ds) in SPEECH
        acc = "Test frame accuracy %" if sp else "Test accuracy %"
        lines += [f"## {title(ds)}", "", "### Table 1 analog: ensemble -> distilled single net", "",
                  f"| System | {acc} |" + (" Utterance error % |" if sp else ""),
                  "|---|---|" + ("---|" if sp else "")]
        for system in ("baseline", "ensemble_arithmetic", "ensemble_geometric", "distilled"):
            r = _row(summary, ds, TABLE1, system, "test_accuracy_pct")
            u = _row(summary, ds, TABLE1, system, "utterance_error_pct")
            lines.append(f"| {NAMES[system].format(M=m_count)} | {fmt_row(r, 2)}{fmt_paper(r)} |"
                         + (f" {fmt_row(u, 2)}{fmt_paper(u)} |" if sp else ""))
        f = facts.get(ds, {})
        eg = _row(summary, ds, TABLE1, "ensemble_arithmetic", "gain_over_members_pct")
        vg = _row(summary, ds, TABLE1, "ensemble_arithmetic", "val_gain_over_members_pct")
        main = facts.get("main_row")
        main_note = ("" if data_of(cfg, ds) != PAPER_SPLIT else
                     " **Table 1's main row**: of the rows on the paper's split, its ensemble gains most on "
                     "validation." if ds == main else
                     f" Not Table 1's main row: `{main}`'s ensemble gains more on validation.")
        g = _row(summary, ds, TABLE1, "distilled", "gain_recovered_pct")
        val = (UNDERIVED if f.get("val_error_pct_by_T") is None else
               ", ".join(f"T={t:g}: {v:.2f}%" for t, v in f["val_error_pct_by_T"].items()))
        chosen = f.get("chosen_temperature", math.nan)
        rule = (f"the paper's T={PAPER_TEMPERATURE:g} is the best or within one binomial standard error of it, so it "
                f"stands" if chosen == PAPER_TEMPERATURE else f"the paper's T={PAPER_TEMPERATURE:g} is more than one "
                f"binomial standard error worse than the best")
        lines += ["", f"Distillation temperature chosen on validation: **T={chosen:g}** "
                      f"(validation error pooled over seeds {val}; {rule}); hard-target weight "
                      f"{cfg['ensembles']['distilled']['hard_weight']}.",
                  f"Gain of the arithmetic ensemble over the mean of its own members, in points (per seed): "
                  f"**{fmt_claim(eg, 2)}**{fmt_paper(eg)}; on validation {fmt_claim(vg, 2)}.{main_note}",
                  f"Share of that gain kept by the distilled net (ratio of seed means): "
                  f"**{fmt_claim(g)}%**{fmt_paper(g)}.", ""]
        lines += _table5_markdown(summary, cfg, ds, f)
    return "\n".join(lines) + "\n"


def markdown_from_committed(cfg: dict, runs: Path | str, summary: pd.DataFrame) -> dict[str, str]:
    """ensembles.md from what git keeps (`kdbench check`, where the runs' logits are absent): the committed summary
    and each row's facts (`row_facts`: the committed FACTS, or rebuilt from the summary, the records and the
    temperature choice); a line whose values only the logits hold carries UNDERIVED."""
    facts_file = layout.results(cfg["profile"]) / FACTS
    facts_json = facts_file.read_bytes() if facts_file.exists() else None
    facts = {ds: row_facts(cfg, runs, summary, ds, facts_json) for ds in datasets(cfg)}
    gains = {ds: facts[ds]["val_gain"] for ds in datasets(cfg)}
    facts["main_row"] = main_row(cfg, gains)
    return {"ensembles.md": markdown(summary, cfg, facts)}


def _table5_markdown(summary: pd.DataFrame, cfg: dict, ds: str, f: dict) -> list[str]:
    """Table 5 on the paper's protocol, then (where the profile adds mixup) the mixup pair in a table of its own."""
    def table(systems_, with_paper):
        out = ["| System | Train accuracy % | Test accuracy % |", "|---|---|---|"]
        pa = fmt_paper if with_paper else (lambda r: "")
        for system in systems_:
            tr, te = (_row(summary, ds, TABLE5, system, m) for m in ("train_accuracy_pct", "test_accuracy_pct"))
            out.append(f"| {NAMES[system]} | {fmt_row(tr, 2)}{pa(tr)} | {fmt_row(te, 2)}{pa(te)} |")
        return out

    gap = _row(summary, ds, TABLE5, "soft_3", "gap_recovered_pct")
    lines = ["### Table 5 analog: soft targets on 3% of the training set (the paper's protocol)", ""]
    lines += table(("baseline_100", "baseline_3", "soft_3"), True)
    lines += ["", f"Share of the test-accuracy gap between 3% and 100% recovered by soft targets (ratio of seed "
                  f"means): **{fmt_claim(gap)}%**{fmt_paper(gap)}. Both 3% nets train on the 3% as they are; the "
                  f"hard-target runs stopped early at epochs {f.get('base3_epochs')} (best validation), the "
                  f"soft-target runs ran every epoch on the cached soft targets of the seed's 100%-data net.", ""]
    alpha = cfg["ensembles"]["fraction"].get("mixup")
    if alpha:
        gm = _row(summary, ds, TABLE5, f"soft_3{MIXUP}", "gap_recovered_pct")
        lines += ["#### Beyond the paper: both 3% nets on mixup", ""]
        lines += table((f"baseline_3{MIXUP}", f"soft_3{MIXUP}"), False)
        lines += ["", f"Both nets train on mixup of their 3% (alpha {alpha:g}, one mixing weight per batch) and the "
                      f"soft-target net's teacher labels every mixed input live: distillation on an augmented "
                      f"transfer set, not the paper's experiment (docs/DEVIATIONS.md). Share of the gap between the "
                      f"3% mixup hard net and the 100% net it recovers: {fmt_claim(gm)}%; the hard runs stopped at "
                      f"epochs {f.get(f'base3{MIXUP}_epochs')}.", ""]
    return lines


def has_logits(cfg: dict, runs: Path | str, ds: str) -> bool:
    """Whether every system of a row has its logits here (git keeps none: a fresh clone has them only for the rows
    it has trained)."""
    return all(layout.logits(runs, job(ds, s)).exists() for s in systems(cfg))


def _facts_to_json(facts: dict) -> dict:
    """One row's facts as JSON holds them: temperatures and seeds as string keys."""
    out = dict(facts)
    out["val_error_pct_by_T"] = {f"{t:g}": e for t, e in facts["val_error_pct_by_T"].items()}
    if facts.get("size_curve") is not None:
        out["size_curve"] = {str(k): v for k, v in facts["size_curve"].items()}
    return out


def _facts_from_json(facts: dict) -> dict:
    """`_facts_to_json` undone: temperatures as floats, seeds as ints."""
    out = dict(facts)
    out["val_error_pct_by_T"] = {float(t): e for t, e in facts["val_error_pct_by_T"].items()}
    if facts.get("size_curve") is not None:
        out["size_curve"] = {(k if k == "sizes" else int(k)): v for k, v in facts["size_curve"].items()}
    return out


def committed_file(path: Path) -> bytes | None:
    """A file as the checkout's HEAD commit holds it (None outside git, or where HEAD has no such file): the rows a
    row keeps come from there, not from the working tree, which the workflow clears of a rule's outputs before it
    runs the rule."""
    try:
        r = subprocess.run(["git", "show", f"HEAD:./{path.name}"], cwd=path.parent, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def kept_rows(cfg: dict, runs: Path, out: Path, ds: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A row whose runs' logits are absent: its summary and provenance rows and its facts as the checkout's commit
    holds them in `out` (the committed tables, `committed_file`), when every run they cite is still the run they
    were made from (`run_identity`). This lets a profile be regenerated in pieces from fresh clones (a piece
    retrains some rows; the others keep their committed, checked values); nothing is kept without its committed
    rows, and a retrained run's old rows are refused."""
    files = [committed_file(out / f) for f in ("ensembles_summary.csv", "ensembles_provenance.csv")]
    fix = (f"Fix: train the row first: snakemake --cores 2 $(kdbench plan PROFILE --jobs '{job(ds, '*')}' --targets) "
           f"--configfile PROFILE")
    if None in files:  # as if the writer had read the logits: a file git does not keep
        missing = next(p for s in systems(cfg) for p in [layout.logits(runs, job(ds, s))] if not p.exists())
        raise FileNotFoundError(2, f"ensembles row {ds!r} needs its runs' logits, or committed rows to keep. {fix}",
                                str(missing))
    summary, prov = (pd.read_csv(io.BytesIO(f)) for f in files)
    summary, prov = summary[summary.section == ds], prov[prov.section == ds]
    if summary.empty:
        raise ValueError(f"ensembles row {ds!r}: its runs' logits are absent and {out} holds no rows of it. {fix}")
    cited = set(zip(prov.source, prov.source_sha256))  # a run's rows cite it once each: hash each run once
    stale = sorted({src for src, sha in cited if run_identity(src) != sha})
    if stale:
        raise ValueError(f"ensembles row {ds!r}: its runs' logits are absent and its committed rows cite runs that "
                         f"were retrained since ({stale[0]}{' and more' if len(stale) > 1 else ''}). {fix}")
    facts = row_facts(cfg, runs, summary, ds, committed_file(out / FACTS))
    if facts["val_error_pct_by_T"] is None:
        raise ValueError(f"ensembles row {ds!r}: its runs' logits are absent, and the validation error of each "
                         f"temperature, which its table quotes, is kept nowhere else. {fix}")
    return summary, prov, facts


def row_facts(cfg: dict, runs: Path | str, summary: pd.DataFrame, ds: str, facts_json: bytes | None) -> dict:
    """A row's facts (what the Markdown and the figure read besides the summary) from what git keeps: its entry in
    the committed FACTS; for a row made before FACTS existed, rebuilt from the summary (the chosen temperature, the
    validation gain), the records (the 3% hard runs' epochs) and its experiment's committed temperature choice (the
    same rule on the same logits: the validation error of each temperature, else None); its size curve, which only
    the logits hold, is then None."""
    if facts_json is not None:
        kept = json.loads(facts_json).get(ds)
        if kept is not None:
            return _facts_from_json(kept)
    t = _row(summary, ds, TABLE1, "distilled", "chosen_temperature")
    g = _row(summary, ds, TABLE1, "ensemble_arithmetic", "val_gain_over_members_pct")
    out = {"chosen_temperature": math.nan if t is None else float(t["mean"]), "val_error_pct_by_T": None,
           "size_curve": None, "val_gain": [] if g is None else [float(g["mean"])]}
    choice = layout.chosen_temperature(layout.results(cfg["profile"]), f"{ds}_distilled_bestT")
    if choice.exists():
        val = json.loads(choice.read_text())["val_error_pct_by_temperature"]
        out["val_error_pct_by_T"] = {float(t): val[f"{t:g}"] for t in cfg["ensembles"]["distilled"]["temperatures"]}
    for run in ("base3", f"base3{MIXUP}"):
        if run in systems(cfg):
            out[f"{run}_epochs"] = [_metrics(Path(runs), ds, run, sd)[0]["final_epoch"] for sd in seeds(cfg)]
    return out


def write(cfg: dict, runs: Path, out: Path, paper: dict, root: Path | str | None = None, figures: bool = True,
          keep_committed: bool = False, **_) -> str:
    """The section's outputs: ensembles_summary.csv, its provenance, ensembles_facts.json (what the Markdown and the
    figure read besides the summary), ensembles.md, ensembles.png. A row whose runs' logits are all here is computed
    from them; with `keep_committed` (the workflow's rule), a row whose logits are absent keeps its committed rows
    (`kept_rows`); without it (`kdbench check`, which re-derives) an absent file is an error."""
    runs, out = Path(runs), Path(out)
    kept = {ds: kept_rows(cfg, runs, out, ds) for ds in datasets(cfg)
            if keep_committed and not has_logits(cfg, runs, ds)}
    cells_, facts = cells(cfg, runs, root=root, rows=[ds for ds in datasets(cfg) if ds not in kept])
    summary, prov = aggregate.tables(cells_, paper)
    parts = [(kept[ds][0], kept[ds][1]) if ds in kept else (summary[summary.section == ds], prov[prov.section == ds])
             for ds in datasets(cfg)]
    summary = pd.concat([p[0] for p in parts], ignore_index=True)[aggregate.SUMMARY_COLUMNS]
    prov = pd.concat([p[1] for p in parts], ignore_index=True)[aggregate.PROVENANCE_COLUMNS]
    facts = {ds: kept[ds][2] if ds in kept else facts[ds] for ds in datasets(cfg)}
    gains = {ds: facts[ds]["val_gain"] for ds in datasets(cfg)}
    facts["main_row"] = main_row(cfg, gains)
    aggregate.write_csv(summary, out / "ensembles_summary.csv")
    aggregate.write_csv(prov, out / "ensembles_provenance.csv")
    summary = pd.read_csv(out / "ensembles_summary.csv")  # as written: a kept row and a computed one alike
    atomic_write_bytes(out / FACTS, (json.dumps({ds: _facts_to_json(facts[ds]) for ds in datasets(cfg)}, indent=1)
                                                + "\n").encode())
    atomic_write_bytes(out / "ensembles.md", markdown(summary, cfg, facts).encode())
    if figures:
        plots.ensembles(summary, facts, datasets(cfg), out / "ensembles.png")
    note = f" ({', '.join(kept)} kept as committed: their logits are absent)" if kept else ""
    return f"ensembles: {len(summary)} summary rows -> {out}{note}"
