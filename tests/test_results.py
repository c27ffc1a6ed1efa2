"""Regression thresholds on the committed results, derived from the paper's claims (never moved to fit).

Every profile: the teacher beats the baseline and the distilled net beats the baseline (mean over seeds); without
3s, the bias correction (shift chosen on validation) cuts errors on the test 3s at least by half; with only 7s and
8s, the bias shift cuts the test error at least by half. Paper scale in addition: the distilled net closes at least
60% of the baseline-teacher gap, and the teacher makes at most 100 errors. Ensembles (speech on the documented split,
Fashion-MNIST): the ensemble beats the single nets, the distilled net keeps at least half of the ensemble's gain,
soft targets on 3% recover at least half of the 3%-vs-100% gap (the unseen-speaker split has no threshold).
Specialists: generalist + specialists is not worse than the generalist.
Issue 12 in addition: every `*_pct` row carries its 95% interval over seeds; Table 1's main row (TABLE1_MAIN) shows an
ensemble gain of at least 1 point with its interval above 0 and a distilled net keeping at least 60% of it; soft
targets on 3% of the speech frames recover at least 70% of the gap; on at least one dataset the specialists gain at
least 1% relative with their interval above 0, and every dataset's Table 4 has rows for 0, 1 and 2+ covering
specialists.
"""
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
# a profile's summary.csv, or where only some of its sections have run (results/paper: MNIST) their summary parts
PROFILES = [p for p in ("quick", "paper") if list((REPO / "results" / p).glob("*summary.csv"))]


def read_summary(profile: str, which: str = "summary") -> pd.DataFrame:
    """A profile's summary.csv (or provenance.csv), else the concatenation of its sections' parts."""
    folder = REPO / "results" / profile
    if (folder / f"{which}.csv").exists():
        return pd.read_csv(folder / f"{which}.csv")
    return pd.concat([pd.read_csv(f) for f in sorted(folder.glob(f"*_{which}.csv"))], ignore_index=True)


def test_quick_profile_results_are_committed():
    assert (REPO / "results" / "quick" / "summary.csv").exists(), "run the quick profile and commit results/quick"


def _mean(summary, system, metric):
    row = summary[(summary.system == system) & (summary.metric == metric)]
    assert len(row) == 1, f"no row {system}/{metric}"
    return float(row["mean"].iloc[0])


@pytest.fixture(params=PROFILES)
def summary(request):
    return request.param, read_summary(request.param)


def test_teacher_and_distilled_beat_the_baseline(summary):
    _, s = summary
    base = _mean(s, "baseline", "test_errors")
    assert _mean(s, "teacher", "test_errors") < base
    assert _mean(s, "distilled_T20", "test_errors") < base


def test_bias_correction_halves_errors_on_the_omitted_threes(summary):
    _, s = summary
    assert _mean(s, "omit3_bias_val", "test_errors_on_3") <= 0.5 * _mean(s, "omit3_raw", "test_errors_on_3")


def test_bias_shift_halves_the_error_of_the_7s_and_8s_transfer_set(summary):
    _, s = summary
    assert _mean(s, "only78_bias_val", "test_error_pct") <= 0.5 * _mean(s, "only78_raw", "test_error_pct")


def test_paper_scale_claims(summary):
    """Issue 22's bars on the paper's MNIST table (paper: 67 / 146 / 74 errors, 91% of the gap; 109 errors and 14 on
    the 3s without 3s after the bias; 13.2% with only 7s and 8s)."""
    profile, s = summary
    if profile != "paper":
        pytest.skip("paper-scale thresholds apply to results/paper only")
    assert _mean(s, "teacher", "test_errors") <= 75
    assert 135 <= _mean(s, "baseline", "test_errors") <= 160
    assert _mean(s, "distilled_T20", "gap_closed_pct") >= 75.0
    assert _mean(s, "omit3_bias_val", "test_errors") <= 130
    assert _mean(s, "omit3_bias_val", "test_errors_on_3") <= 25
    assert _mean(s, "only78_bias_val", "test_error_pct") <= 16.0


def test_quick_mnist_student_closes_55pct_of_the_gap(summary):
    """Issue 22: the quick profile's T=20 student closes >= 55% of the teacher-baseline gap (paper 91%)."""
    profile, s = summary
    if profile != "quick":
        pytest.skip("the quick profile's bar")
    assert _mean(s, "distilled_T20", "gap_closed_pct") >= 55.0


# ---- sections 4 and 6 (issue: ensembles): the paper's claims on the speech (documented split) and image rows
CLAIM_DATASETS = ["speech", "fashion_mnist"]

# Claims a committed result misses, recorded instead of hidden. Each becomes a strict xfail: the bar stays where the
# paper's claim puts it, the miss is visible in every test run, and the day a re-run meets the bar the test fails
# until its entry is removed here. Keyed by (profile, section or dataset, claim).
KNOWN_MISSES = {
    ("quick", "speech_narrow", "table1_main"):
        "quick (5 seeds): the ensemble gains 2.41 +- 0.08 points [2.31, 2.51] over its members (met), but the "
        "distilled net (T=2) keeps 8.6 +- 10.8% [-4.8, 21.9] of it, under the 60% bar",
    ("quick", "speech", "distilled_gain"):
        "quick (5 seeds): the 10-net ensemble gains 0.54 +- 0.10 points [0.41, 0.66]; the distilled net (T=2) keeps "
        "-5.4 +- 26.3% [-38.1, 27.3] of it, under the 50% bar",
    ("quick", "fashion_mnist", "distilled_gain"):
        "quick (5 seeds): the 10-net ensemble gains 0.25 +- 0.04 points [0.21, 0.30]; the distilled net (T=2) keeps "
        "14.1 +- 60.0% [-60.4, 88.6] of it, under the 50% bar (the interval holds the bar: a gain this small is "
        "mostly seed noise)",
    ("quick", "speech_narrow", "table5_half"):
        "quick (5 seeds, the paper's protocol): on the width-limited speech nets soft targets on 3% recover 40.8 +- "
        "10.9% [27.3, 54.4] of the 3%-to-100% gap, under the 50% bar (paper 86.8; the mixup pair, a row of its own: "
        "96.4 +- 1.6%)",
    ("quick", "speech", "table5_70"):
        "quick (5 seeds, the paper's protocol: both 3% nets on the 3% as they are): soft targets recover 64.3 +- "
        "2.5% [61.2, 67.4] of the 3%-to-100% gap, under the 70% bar (the mixup pair, a row of its own: 87.4 +- 1.2%)",
}


def _needs_part(profile, part):
    """Skip a claim of a section the profile has not run yet (results/paper: its MNIST section alone, so far)."""
    folder = REPO / "results" / profile
    if not (folder / "summary.csv").exists() and not (folder / f"{part}_summary.csv").exists():
        pytest.skip(f"results/{profile} has no {part} section yet")


def _known_miss(request, profile, key, claim):
    reason = KNOWN_MISSES.get((profile, key, claim))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def _cell(s, section, system, metric):
    row = s[(s.section == section) & (s.system == system) & (s.metric == metric)]
    assert len(row) == 1, f"no row {section}/{system}/{metric}"
    return float(row["mean"].iloc[0])


@pytest.mark.parametrize("section", CLAIM_DATASETS)
def test_the_ensemble_beats_its_members(summary, section):
    profile, s = summary
    _needs_part(profile, "ensembles")
    base = _cell(s, section, "baseline", "test_accuracy_pct")
    assert _cell(s, section, "ensemble_arithmetic", "test_accuracy_pct") > base
    assert _cell(s, section, "ensemble_geometric", "test_accuracy_pct") > base


@pytest.mark.parametrize("section", CLAIM_DATASETS)
def test_the_distilled_net_keeps_at_least_half_of_the_ensembles_gain(summary, section, request):
    profile, s = summary  # paper: 86%
    _needs_part(profile, "ensembles")
    _known_miss(request, profile, section, "distilled_gain")
    assert _cell(s, section, "distilled", "gain_recovered_pct") >= 50.0


@pytest.mark.parametrize("section", [*CLAIM_DATASETS, "speech_narrow"])  # every row beside the paper's 86.8
def test_soft_targets_recover_at_least_half_of_the_3pct_gap(summary, section, request):
    profile, s = summary  # paper: 87%
    _needs_part(profile, "ensembles")
    _known_miss(request, profile, section, "table5_half")
    _assert_paper_protocol(profile, s)
    assert _cell(s, section, "soft_3", "gap_recovered_pct") >= 50.0


# ---- section 5 (issue: specialists): adding specialists does not make the generalist worse (mean over seeds)
@pytest.mark.parametrize("dataset", ["fashion_mnist", "speech"])
def test_specialists_do_not_hurt_the_generalist(summary, dataset, request):
    profile, s = summary
    _needs_part(profile, "specialists")
    _known_miss(request, profile, dataset, "specialists")
    gen = _cell(s, "specialists", f"{dataset}/generalist", "test_accuracy_pct")
    assert _cell(s, "specialists", f"{dataset}/with_specialists", "test_accuracy_pct") >= gen


# ---- issue 12: every claim with its interval, and analogs that can show the paper's effects
def table1_main(s) -> str:
    """Table 1's main row by the rule of docs/DEVIATIONS.md (kdbench.sections.ensembles.main_row), read back from the
    summary: of the rows that stand beside the paper's Table 1 gain, the one whose ensemble gains most over its
    members on validation."""
    beside = s[(s.table == "table1") & (s.system == "ensemble_arithmetic") & (s.metric == "gain_over_members_pct")
               & s.paper.notna()].section
    val = s[(s.table == "table1") & (s.metric == "val_gain_over_members_pct") & s.section.isin(beside)]
    assert len(val), "no validation gains of the rows beside the paper's Table 1"
    return str(val.sort_values(["mean", "section"]).section.iloc[-1])


def _row(s, section, system, metric):
    row = s[(s.section == section) & (s.system == system) & (s.metric == metric)]
    assert len(row) == 1, f"no row {section}/{system}/{metric}"
    return row.iloc[0]


def test_every_pct_row_carries_its_95pct_interval(summary, request):
    profile, s = summary
    _known_miss(request, profile, "all", "intervals")
    assert {"ci95_low", "ci95_high"} <= set(s.columns)
    rows = s[s.metric.str.endswith("_pct") & (s.n_seeds >= 2)]
    assert len(rows) and rows.ci95_low.notna().all() and rows.ci95_high.notna().all()
    assert ((rows.ci95_low <= rows["mean"]) & (rows["mean"] <= rows.ci95_high)).all()


def test_table1_main_row_ensemble_gains_a_point_and_the_distilled_net_keeps_60pct(summary, request):
    profile, s = summary  # paper: 2.2 points gained, 86% of it kept
    _needs_part(profile, "ensembles")
    main = table1_main(s)
    _known_miss(request, profile, main, "table1_main")
    gain = _row(s, main, "ensemble_arithmetic", "gain_over_members_pct")
    assert gain["mean"] >= 1.0 and gain["ci95_low"] > 0
    assert _row(s, main, "distilled", "gain_recovered_pct")["mean"] >= 60.0


def test_every_row_beside_a_paper_number_follows_the_papers_protocol(summary, request):
    """Issue 23: no run behind a cell that stands beside the paper's number trained on mixup (or any other
    addition recorded in its config); the mixup rows exist apart, without a paper number."""
    profile, s = summary
    _assert_paper_protocol(profile, s)


def paper_protocol_violations(summary, prov, root, cfg) -> list[str]:
    """Issue 35: what the runs behind each cell beside a paper number recorded of their training (`config.json`'s
    `config`): no mixup, no bootstrap, no input jitter but for the MNIST teacher (the paper's), and the net's widths
    the plan's for that job; and the mixup rows stand beside no paper number."""
    import json

    from kdbench import layout, plan
    jobs = plan.jobs(cfg)
    runs = (root / layout.runs(cfg["profile"])).resolve()
    beside = summary[summary.paper.notna()][["section", "table", "system", "metric"]]
    cited = prov.merge(beside, on=["section", "table", "system", "metric"])[["system", "source"]].drop_duplicates()
    assert len(cited), "no provenance row beside a paper number"
    found = []
    for system, src in cited.itertuples(index=False):
        path = root / src  # a run's record or logits, or a folder of runs (the specialists and their generalist)
        configs = (sorted(path.rglob("config.json")) if path.is_dir() else
                   [next(p for p in path.parents if (p / "config.json").exists()) / "config.json"])
        if not configs:
            found.append(f"{src}: no config.json")
        for c in configs:
            rec = json.loads(c.read_text())["config"]
            job = str(c.parent.resolve().relative_to(runs))
            if rec.get("mixup"):
                found.append(f"{src} ({system}): trained on mixup ({c})")
            if rec.get("bootstrap"):
                found.append(f"{src} ({system}): trained on a bootstrap sample ({c})")
            if rec.get("jitter") and job != "teacher":
                found.append(f"{src} ({system}): trained on jittered inputs ({c})")
            planned = jobs[job].config.get("widths") if job in jobs else None
            if job in jobs and rec.get("widths") != planned:
                found.append(f"{src} ({system}): widths {rec.get('widths')}, the plan's {planned}")
    mixup = summary[summary.system.str.endswith("_mixup")]
    found += [f"{r.section}/{r.system}/{r.metric}: a mixup row beside the paper's {r.paper}"
              for r in mixup[mixup.paper.notna()].itertuples()]
    return found


def _assert_paper_protocol(profile, s):
    from kdbench import profile as profiles
    cfg = profiles.load(REPO / "config" / ("config.yaml" if profile == "paper" else f"{profile}.yaml"))
    prov = read_summary(profile, "provenance")
    found = paper_protocol_violations(s, prov, REPO, cfg)
    assert found == [], "\n".join(found[:10])


def test_the_protocol_test_sees_a_paper_row_re_pointed_at_a_mixup_run():
    """The speech Table 5 rows beside the paper's numbers, re-pointed at the mixup pair's runs, fail."""
    from kdbench import profile as profiles
    s = pd.read_csv(REPO / "results" / "quick" / "summary.csv")
    prov = pd.read_csv(REPO / "results" / "quick" / "provenance.csv")
    rows = (prov.section == "speech") & (prov.table == "table5") & prov.system.isin(["baseline_3", "soft_3"])
    assert rows.sum() > 0
    prov.loc[rows, "source"] = prov.loc[rows, "source"].str.replace("/base3/", "/base3_mixup/").str.replace(
        "/soft3/", "/soft3_mixup/")
    cfg = profiles.load(REPO / "config" / "quick.yaml")
    found = paper_protocol_violations(s, prov, REPO, cfg)
    assert any("trained on mixup" in p and "soft3_mixup" in p for p in found), found


def test_soft_targets_recover_70pct_of_the_speech_gap(summary, request):
    profile, s = summary  # paper: 87%
    _needs_part(profile, "ensembles")
    _known_miss(request, profile, "speech", "table5_70")
    _assert_paper_protocol(profile, s)
    assert _row(s, "speech", "soft_3", "gap_recovered_pct")["mean"] >= 70.0


def test_specialists_gain_a_percent_with_an_interval_above_0_somewhere(summary, request):
    profile, s = summary  # paper: +4.4% relative
    _needs_part(profile, "specialists")
    _known_miss(request, profile, "all", "specialists_gain")
    rows = s[(s.section == "specialists") & (s.metric == "relative_gain_pct")]
    assert len(rows) and ((rows["mean"] >= 1.0) & (rows["ci95_low"] > 0)).any()


def test_table4_has_rows_for_0_1_and_2plus_covering_specialists(summary, request):
    profile, s = summary
    _needs_part(profile, "specialists")
    _known_miss(request, profile, "all", "table4_rows")
    t4 = s[(s.section == "specialists") & (s.table == "table4") & (s.metric == "cases")]
    for dataset in {sys.split("/")[0] for sys in t4.system}:
        counts = {int(sys.rsplit("_", 1)[1]) for sys in t4.system if sys.startswith(f"{dataset}/covered_by_")}
        assert 0 in counts and 1 in counts and max(counts) >= 2, f"{dataset}: Table 4 rows {sorted(counts)}"


# Each part of results/quick and the files that belong to it (a problem belongs to the part of the file it names
# first); "everything" is `kdbench check` as a whole (orphan
# files, runs of jobs the plan no longer has, every table)
CHECK_PARTS = {
    "mnist": (None, ("mnist_provenance",)),  # its jobs' run folders, from the section's own plan (below)
    "ensembles": (["runs/ensembles/"], ("ensembles_provenance",)),
    "specialists": (["runs/specialists/"], ("specialists_provenance",)),
    "variants": (["runs/variants/"], ("variants.csv", "variants_mnist.csv", "variants.md", "variants_mnist.md",
                                      "quick/variants/")),
}
@pytest.mark.parametrize("part", [*CHECK_PARTS, "everything"])
def test_the_committed_results_pass_kdbench_check(part):
    """Issue 23: every committed run record of results/quick is what the current plan trains, from a clean commit
    in this history, and every table cites only such runs, the very runs it was made from (their identities)."""
    import subprocess

    from kdbench import check, profile
    from kdbench.sections import mnist
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    cfg = profile.load(REPO / "config" / "quick.yaml")
    found = check.problems(cfg, REPO)
    if part != "everything":
        jobs, files = CHECK_PARTS[part]
        jobs = jobs or [f"runs/{spec.name}/" for spec in mnist.jobs(cfg)]
        found = [p for p in found if any(t in p.split(":")[0] for t in (*files, *jobs))]  # the file it names
    assert found == [], "\n".join(found[:10])


def test_the_committed_paper_results_pass_kdbench_check():
    """Issue 34: results/paper (the MNIST section at the paper's scale, committed piece by piece as its runs finish)
    is what config/config.yaml plans, from clean commits, its tables re-derived from its records."""
    import subprocess

    from kdbench import check, profile
    if not (REPO / "results" / "paper").is_dir():
        pytest.skip("results/paper is not committed")
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    found = check.problems(profile.load(REPO / "config" / "config.yaml"), REPO)
    assert found == [], "\n".join(found[:10])
