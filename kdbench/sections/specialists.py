"""Specialist models for confusable classes (the paper's section 5, Tables 3 and 4).

What this file achieves: it defines the generalist of a dataset (the ensembles section's net of that dataset with
the profile's `specialists.generalist` keys on top, e.g. a narrower net: the paper's generalist was limited by its
task, not by its data; one per seed of the section's own `seeds`), and with it

1. finds confusable clusters: k-means (scikit-learn) on the columns of the covariance matrix of the generalists'
   predicted probabilities on the validation split (labels never used), scaled to a correlation matrix so that
   frequent, high-variance classes (speech silence) do not dominate the distances, for each k of the config;
   clusters within
   the size limits are kept, duplicates dropped; different k give overlapping clusters, so a class can be covered by
   0, 1, 2, ... specialists (the paper's 61 clusters overlapped too);
2. defines each specialist's training config: it starts from its seed's generalist, its output layer covers its
   cluster plus one dustbin class, half of each epoch comes from its cluster and half is drawn afresh from the rest;
   its dustbin logit is then raised by log(natural odds / training odds) of the dustbin (train.py records it);
   with `soft_targets` (the paper's section 6.1) it also learns from its generalist's soft targets, collapsed onto
   its cluster and dustbin (`kdbench.engine.teachers.collapse_to_subset`), on every example it sees;
3. combines them at test time as the paper's eq. 5: for each test case the generalist's top-n classes pick the
   active specialists, and q = softmax(z) minimizes KL(p_g || q) + sum over active m of KL(p_m || q_m), where q_m
   lumps q's non-cluster classes into the dustbin; z is found by L-BFGS on all test cases at once;
4. tabulates test accuracy and conditional accuracy (cases whose true class is covered, predictions restricted to
   the covered classes) for generalist and generalist + specialists, and the change by the number of specialists
   covering the true class.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from kdbench import layout
from kdbench.data import registry as data_registry
from kdbench.records import atomic_write_bytes
from kdbench.report import aggregate
from kdbench.report import figures as plots
from kdbench.report.aggregate import Cell, fmt_claim, fmt_paper, fmt_row, read_json
from kdbench.sections import JobSpec, ensembles

# the section registry (kdbench.sections): what `rule all` asks of it, and whether it adds to summary.csv
OUTPUTS = ["specialists.md", "specialists.png"]
ORDER = 4  # its place in the suite's summary and targets (kdbench.sections)
SUMMARY = True

TABLE3, TABLE4 = "table3", "table4"


def datasets(cfg: dict) -> list[str]:
    return list(cfg["specialists"]["datasets"])


def settings(cfg: dict, dataset: str) -> dict:
    """The dataset's specialists settings: the common ones overridden by the dataset's own."""
    sp = cfg["specialists"]
    own = sp["datasets"][dataset] or {}
    return {"clusters": cluster_settings(cfg, dataset), "train": {**sp["train"], **own.get("train", {})},
            "top_n": own.get("top_n", sp["top_n"]), "subset_fraction": sp["subset_fraction"],
            "combine": {**sp["combine"]}, "soft_targets": own.get("soft_targets", sp.get("soft_targets"))}


def cluster_settings(cfg: dict, dataset: str) -> dict:
    """Only what the clusters depend on (so a new training recipe does not recompute them)."""
    own = cfg["specialists"]["datasets"][dataset] or {}
    return {**cfg["specialists"]["clusters"], **own.get("clusters", {})}


def cluster_config(cfg: dict, dataset: str) -> dict:
    """The part of the config a dataset's clusters checkpoint sees: the section's seeds and that dataset's cluster
    settings. The generalists' recipe is not in it: a new recipe retrains the generalists, whose logits are the
    checkpoint's input, and that reruns it; the profile's or the ensembles section's seeds and the other datasets'
    cluster settings do not."""
    sp = cfg["specialists"]
    own = (sp["datasets"][dataset] or {}).get("clusters", {})
    return {"specialists": {"seeds": seeds(cfg), "clusters": sp["clusters"],
                            "datasets": {dataset: {"clusters": own}}}}


def job(dataset: str, i: int) -> str:
    """The plan's name of specialist i of a dataset (its folder under runs/)."""
    return f"specialists/{dataset}/spec{i}"


def seeds(cfg: dict) -> list[int]:
    """The section's seeds: its own `seeds` if set (a small generalist affords more), else the profile's."""
    return list(cfg["specialists"].get("seeds") or cfg["seeds"])


def generalist_job(dataset: str) -> str:
    """The plan's name of a dataset's generalists (one member per seed)."""
    return f"specialists/{dataset}/generalist"


def generalist_config(cfg: dict, dataset: str) -> dict:
    """The generalist's `kdbench.engine.train` config: the ensembles section's recipe for the dataset, then the
    specialists' common and per-dataset `generalist` keys."""
    sp = cfg["specialists"]
    own = (sp["datasets"][dataset] or {}).get("generalist", {})
    base = ensembles.train_config(cfg, dataset, "ensemble", None)
    base.pop("bootstrap", None)  # the row's bagging is for its ensemble's members, not for one generalist per seed
    return {**base, **sp.get("generalist", {}), **own}


def generalist_members(cfg: dict) -> list[int]:
    """Positions of the seeds' generalists in the generalist job's batched model: seed i is member i."""
    return list(range(len(seeds(cfg))))


# ---------------------------------------------------------------------------------------------------- clusters

def prediction_covariance(probs: torch.Tensor) -> torch.Tensor:
    """(S, N, C) predicted probabilities of S generalists -> (C, C) covariance over examples, averaged over S."""
    centered = probs - probs.mean(1, keepdim=True)
    return (centered.transpose(1, 2) @ centered / (probs.shape[1] - 1)).mean(0)


def correlation(cov: torch.Tensor) -> torch.Tensor:
    d = cov.diagonal().clamp_min(1e-12).sqrt()
    return cov / d[:, None] / d[None, :]


def find_clusters(cov: torch.Tensor, ks: list[int], min_size: int, max_size: int, seed: int) -> list[list[int]]:
    """k-means on the columns of a (covariance or correlation) matrix for each k; clusters of min_size..max_size
    classes, deduplicated, in order of first appearance."""
    from sklearn.cluster import KMeans  # deferred: about a second to import, needed only to find clusters

    cols = cov.double().numpy()
    out: list[list[int]] = []
    for k in ks:
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(cols)
        for c in range(k):
            members = sorted(int(i) for i in (labels == c).nonzero()[0])
            if min_size <= len(members) <= max_size and members not in out:
                out.append(members)
    return out


def clusters_for(cfg: dict, dataset: str, generalist_logits: Path | str) -> dict:
    """The clusters of a dataset from its generalists' validation predictions (what the workflow checkpoint writes)."""
    s = cluster_settings(cfg, dataset)
    blob = torch.load(generalist_logits, map_location="cpu", weights_only=False)
    probs = torch.softmax(blob["val"][generalist_members(cfg)].float(), -1)
    cov = prediction_covariance(probs)
    clusters = find_clusters(correlation(cov), s["k"], s["min_size"], s["max_size"], s["seed"])
    if not clusters:
        raise ValueError(f"specialists: no cluster of {s['min_size']}..{s['max_size']} classes in {dataset}'s "
                         f"k-means partitions for k={s['k']}; widen the size limits or change k")
    return {"dataset": dataset, "clusters": clusters, "k": s["k"], "covariance": cov.tolist(),
            "source": str(generalist_logits)}


# ---------------------------------------------------------------------------------------------------- training

def base_config(cfg: dict, dataset: str) -> dict:
    """What every specialist of a dataset shares: the generalist's recipe, started from the generalist of its seed,
    the profile's specialist training keys and subset fraction. `with_cluster` adds a cluster."""
    base = generalist_config(cfg, dataset)
    s = settings(cfg, dataset)
    generalist = layout.model(layout.runs(cfg["profile"]), generalist_job(dataset))
    out = {**base, **s["train"], "subset_fraction": s["subset_fraction"],
           "init_from": str(generalist), "init_members": generalist_members(cfg)}
    soft = s["soft_targets"]
    if soft:  # section 6.1: hard targets and the generalist's soft targets (seed s learns from generalist s)
        out.update(variant="hinton", variant_params={"temperature": soft["temperature"],
                                                     "hard_weight": soft["hard_weight"]},
                   teacher_logits=teacher_logits(cfg, dataset), teacher_pairing="paired")
    return out


def teacher_logits(cfg: dict, dataset: str) -> str | None:
    """The generalists' cached training-split logits a dataset's specialists learn from, if they take soft
    targets (`soft_targets`), else None."""
    if not settings(cfg, dataset)["soft_targets"]:
        return None
    return str(layout.train_logits(layout.runs(cfg["profile"]), generalist_job(dataset)))


def with_cluster(base: dict, classes: list[int]) -> dict:
    """A specialist's `kdbench.engine.train` config: its cluster plus a dustbin as outputs."""
    return {**base, "widths": base["widths"][:-1] + [len(classes) + 1], "class_subset": list(classes)}


def train_config(cfg: dict, dataset: str, classes: list[int]) -> dict:
    return with_cluster(base_config(cfg, dataset), classes)


# ---------------------------------------------------------------------------------------------------- inference

def specialist_log_probs(logits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(..., n+1) specialist logits, dustbin last, with its dustbin logit raised by shift -> log-probabilities."""
    z = logits.float().clone()
    z[..., -1] += shift
    return torch.log_softmax(z, -1)


def lumped_log_q(log_q: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """log q over (cluster classes, dustbin = every other class): (N, C) -> (N, n+1)."""
    c = log_q.shape[-1]
    rest = [i for i in range(c) if i not in set(classes)]
    return torch.cat([log_q[:, classes], torch.logsumexp(log_q[:, rest], -1, keepdim=True)], -1)


def combine(log_pg: torch.Tensor, spec_log_p: list[torch.Tensor], clusters: list[list[int]], active: torch.Tensor,
            steps: int = 100) -> torch.Tensor:
    """The paper's eq. 5 for N test cases at once. log_pg (N, C) generalist, spec_log_p[m] (N, n_m+1) specialist m,
    active (N, M) bool. Returns log q (N, C) minimizing KL(p_g||q) + sum_{m active} KL(p_m||q_m); cases without an
    active specialist keep p_g (its own minimizer)."""
    use = active.any(1)
    out = log_pg.clone()
    if not bool(use.any()):
        return out
    lg, act = log_pg[use].double(), active[use].double()
    specs = [p[use].double() for p in spec_log_p]
    z = lg.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        log_q = torch.log_softmax(z, -1)
        loss = -(lg.exp() * log_q).sum()  # cross-entropies: the KLs up to constants
        for m, classes in enumerate(clusters):
            lq = lumped_log_q(log_q, classes)
            loss = loss - (act[:, m] * (specs[m].exp() * lq).sum(-1)).sum()
        loss.backward()
        return loss

    opt.step(objective)
    out[use] = torch.log_softmax(z.detach(), -1).to(out.dtype)
    return out


def active_specialists(log_pg: torch.Tensor, clusters: list[list[int]], top_n: int) -> torch.Tensor:
    """(N, M) bool: specialist m is active where its cluster meets the generalist's top_n classes."""
    top = log_pg.topk(top_n, -1).indices  # (N, n)
    member = torch.zeros(len(clusters), log_pg.shape[-1], dtype=torch.bool)
    for m, classes in enumerate(clusters):
        member[m, classes] = True
    return member[:, top].any(-1).T  # (M, N, n) -> (N, M)


def coverage(labels: torch.Tensor, clusters: list[list[int]], num_classes: int) -> torch.Tensor:
    """Number of specialists covering each case's true class."""
    per_class = torch.zeros(num_classes, dtype=torch.long)
    for classes in clusters:
        per_class[classes] += 1
    return per_class[labels]


def conditional_accuracy(log_q: torch.Tensor, labels: torch.Tensor, covered: list[int]) -> float:
    """The paper's conditional accuracy: cases whose true class is covered, argmax over the covered classes only."""
    cov = torch.tensor(sorted(covered))
    keep = torch.isin(labels, cov)
    pred = cov[log_q[keep][:, cov].argmax(-1)]
    return 100.0 * float((pred == labels[keep]).float().mean())


def evaluate(cfg: dict, dataset: str, runs: Path | str, clusters: list[list[int]]) -> dict:
    """Per seed: generalist and combined log-probabilities on the test set, and the metrics of both."""
    runs = Path(runs)
    s = settings(cfg, dataset)
    gen = torch.load(layout.logits(runs, generalist_job(dataset)), map_location="cpu", weights_only=False)
    labels = gen["test_labels"]
    specs = [torch.load(layout.logits(runs, job(dataset, m)), map_location="cpu",
                        weights_only=False) for m in range(len(clusters))]
    covered = sorted({c for cl in clusters for c in cl})
    cover = coverage(labels, clusters, gen["test"].shape[-1])
    per_seed = []
    for i, seed in enumerate(seeds(cfg)):
        log_pg = torch.log_softmax(gen["test"][generalist_members(cfg)[i]].float(), -1)
        spec_lp = []
        for m in range(len(clusters)):
            rec = read_json(layout.metrics(runs, job(dataset, m), seed))
            spec_lp.append(specialist_log_probs(specs[m]["test"][i], torch.tensor(rec["dustbin_logit_shift"])))
        active = active_specialists(log_pg, clusters, s["top_n"])
        log_q = combine(log_pg, spec_lp, clusters, active, s["combine"]["steps"])
        right_g, right_q = log_pg.argmax(-1) == labels, log_q.argmax(-1) == labels
        by_cover = {}
        for n_cov in sorted(set(cover.tolist())):  # only counts that occur: no empty rows
            sel = cover == n_cov
            g, q = int(right_g[sel].sum()), int(right_q[sel].sum())
            by_cover[n_cov] = {"cases": int(sel.sum()), "delta_correct": q - g,
                               "relative_change_pct": 100.0 * (q - g) / g if g else math.nan}
        per_seed.append({
            "seed": seed, "active_cases": int(active.any(1).sum()),
            "generalist": {"test_accuracy_pct": 100.0 * float(right_g.float().mean()),
                           "conditional_accuracy_pct": conditional_accuracy(log_pg, labels, covered)},
            "with_specialists": {"test_accuracy_pct": 100.0 * float(right_q.float().mean()),
                                 "conditional_accuracy_pct": conditional_accuracy(log_q, labels, covered)},
            "by_coverage": by_cover})
    return {"dataset": dataset, "clusters": clusters, "covered_classes": covered, "per_seed": per_seed}


def cells(cfg: dict, runs: Path | str, cluster_files: dict[str, Path]) -> tuple[list[Cell], dict]:
    out, facts = [], {}
    for ds in datasets(cfg):
        clusters = read_json(cluster_files[ds])["clusters"]
        ev = evaluate(cfg, ds, runs, clusters)
        facts[ds] = ev
        src = str(layout.run(runs, f"specialists/{ds}"))

        def add(table, system, metric, values, unit="pct", ds=ds):
            c = Cell("specialists", table, f"{ds}/{system}", metric, unit)
            c.values = list(values)
            out.append(c)

        for system in ("generalist", "with_specialists"):
            for metric in ("test_accuracy_pct", "conditional_accuracy_pct"):
                add(TABLE3, system, metric, [(r["seed"], r[system][metric], src) for r in ev["per_seed"]])
        add(TABLE3, "with_specialists", "relative_gain_pct",
            [(r["seed"], 100.0 * (r["with_specialists"]["test_accuracy_pct"] / r["generalist"]["test_accuracy_pct"]
                                  - 1.0), src) for r in ev["per_seed"]])
        for n_cov in ev["per_seed"][0]["by_coverage"]:
            for metric, unit in (("cases", "count"), ("delta_correct", "count"), ("relative_change_pct", "pct")):
                add(TABLE4, f"covered_by_{n_cov}", metric,
                    [(r["seed"], r["by_coverage"][n_cov][metric], src) for r in ev["per_seed"]], unit)
    return out, facts


def jobs(cfg: dict) -> list[JobSpec]:
    """The generalists (the specialists themselves are planned once their clusters are known)."""
    return [JobSpec(generalist_job(ds), tuple(seeds(cfg)), generalist_config(cfg, ds)) for ds in datasets(cfg)]


def _names(dataset: str) -> list[str]:
    return list(data_registry.get(dataset).classes)


def markdown(summary: pd.DataFrame, cfg: dict, facts: dict) -> str:
    def row(ds, table, system, metric):
        r = summary[(summary.table == table) & (summary.system == f"{ds}/{system}") & (summary.metric == metric)]
        return None if r.empty else r.iloc[0]

    lines = [f"# Specialists for confusable classes (profile `{cfg['profile']}`)", "",
             f"Mean ± std over {len(seeds(cfg))} seeds; the paper's JFT numbers (61 specialists, 15,000 classes) in "
             "parentheses. Conditional accuracy counts only test cases whose true class some specialist covers, "
             "with predictions restricted to the covered classes.", ""]
    for ds in datasets(cfg):
        ev = facts[ds]
        names = _names(ensembles.data_of(cfg, ds))
        s = settings(cfg, ds)
        lines += [f"## {ensembles.title(ds)}", "",
                  "Clusters (k-means on the columns of the generalists' prediction covariance scaled to "
                  f"correlations, k={s['clusters']['k']}, "
                  f"{s['clusters']['min_size']}-{s['clusters']['max_size']} classes), one specialist each:", ""]
        lines += [f"- spec{m}: " + ", ".join(names[c] for c in cl) for m, cl in enumerate(ev["clusters"])]
        active = [r["active_cases"] for r in ev["per_seed"]]
        lines += ["", f"Top-{s['top_n']} class of the generalist picks the active specialists: "
                      f"{active} test cases had at least one (per seed).", "",
                  "### Table 3 analog", "", "| System | Conditional test accuracy % | Test accuracy % |",
                  "|---|---|---|"]
        for system, label in (("generalist", "Generalist (baseline net)"),
                              ("with_specialists", f"+ {len(ev['clusters'])} specialist models")):
            c = row(ds, TABLE3, system, "conditional_accuracy_pct")
            t = row(ds, TABLE3, system, "test_accuracy_pct")
            lines.append(f"| {label} | {fmt_row(c, 2)}{fmt_paper(c)} | {fmt_row(t, 2)}{fmt_paper(t)} |")
        g = row(ds, TABLE3, "with_specialists", "relative_gain_pct")
        lines += ["", f"Relative change of test accuracy: **{fmt_claim(g, 2)}%**{fmt_paper(g)} "
                      "(mean ± std [95% interval] over seeds, each seed against its own generalist).", "",
                  "### Table 4 analog: by the number of specialists covering the correct class", "",
                  "| # specialists covering | # test cases | Δ correct | Relative accuracy change % |",
                  "|---|---|---|---|"]
        for n_cov in ev["per_seed"][0]["by_coverage"]:
            cases = row(ds, TABLE4, f"covered_by_{n_cov}", "cases")
            delta = row(ds, TABLE4, f"covered_by_{n_cov}", "delta_correct")
            rel = row(ds, TABLE4, f"covered_by_{n_cov}", "relative_change_pct")
            lines.append(f"| {n_cov} | {fmt_row(cases, 0)} | {fmt_row(delta, 1)} | {fmt_claim(rel, 2)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write(cfg: dict, runs: Path, out: Path, paper: dict, clusters: dict[str, Path] | None = None,
          figures: bool = True, **_) -> str:
    """The section's outputs: specialists_summary.csv, its provenance, specialists.md, specialists.png."""
    files = clusters or {ds: layout.clusters(runs, ds) for ds in datasets(cfg)}
    cells_, facts = cells(cfg, runs, files)
    summary = aggregate.write_tables(cells_, paper, out, "specialists")
    atomic_write_bytes(out / "specialists.md", markdown(summary, cfg, facts).encode())
    if figures:
        plots.specialists(summary, facts, out / "specialists.png")
    return f"specialists: {len(summary)} summary rows -> {out}"
