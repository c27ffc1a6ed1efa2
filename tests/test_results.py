"""Regression thresholds on the committed results, derived from the paper's claims (never moved to fit).

Every profile: the teacher beats the baseline and the distilled net beats the baseline (mean over seeds); without
3s, the bias correction (shift chosen on validation) cuts errors on the test 3s at least by half; with only 7s and
8s, the bias shift cuts the test error at least by half. Paper scale in addition: the distilled net closes at least
60% of the baseline-teacher gap, and the teacher makes at most 100 errors. Ensembles (speech on the documented split,
Fashion-MNIST): the ensemble beats the single nets, the distilled net keeps at least half of the ensemble's gain,
soft targets on 3% recover at least half of the 3%-vs-100% gap (the unseen-speaker split has no threshold).
Specialists: generalist + specialists is not worse than the generalist.
"""
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
PROFILES = [p for p in ("quick", "paper") if (REPO / "results" / p / "summary.csv").exists()]


def test_quick_profile_results_are_committed():
    assert (REPO / "results" / "quick" / "summary.csv").exists(), "run the quick profile and commit results/quick"


def _mean(summary, system, metric):
    row = summary[(summary.system == system) & (summary.metric == metric)]
    assert len(row) == 1, f"no row {system}/{metric}"
    return float(row["mean"].iloc[0])


@pytest.fixture(params=PROFILES)
def summary(request):
    return request.param, pd.read_csv(REPO / "results" / request.param / "summary.csv")


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
    profile, s = summary
    if profile != "paper":
        pytest.skip("paper-scale thresholds apply to results/paper only")
    assert _mean(s, "distilled_T20", "gap_closed_pct") >= 60.0
    assert _mean(s, "teacher", "test_errors") <= 100


# ---- sections 4 and 6 (issue: ensembles): the paper's claims on the speech (documented split) and image rows
CLAIM_DATASETS = ["speech", "fashion_mnist"]

# Claims a committed result misses, recorded instead of hidden. Each becomes a strict xfail: the bar stays where the
# paper's claim puts it, the miss is visible in every test run, and the day a re-run meets the bar the test fails
# until its entry is removed here. Keyed by (profile, section or dataset, claim).
KNOWN_MISSES = {
    ("quick", "fashion_mnist", "distilled_gain"):
        "quick: the 10-net ensemble gains only 0.24 points over its members and the distilled net keeps -29.7%",
    ("quick", "speech", "distilled_gain"):
        "quick: the distilled net keeps 45.0 +- 23.9% of the ensemble's 0.56-point gain, under the 50% bar",
    ("quick", "speech", "specialists"):
        "quick: generalist + 10 speech-state specialists 87.77% vs generalist 87.90% (-0.15% relative)",
}


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
    _, s = summary
    base = _cell(s, section, "baseline", "test_accuracy_pct")
    assert _cell(s, section, "ensemble_arithmetic", "test_accuracy_pct") > base
    assert _cell(s, section, "ensemble_geometric", "test_accuracy_pct") > base


@pytest.mark.parametrize("section", CLAIM_DATASETS)
def test_the_distilled_net_keeps_at_least_half_of_the_ensembles_gain(summary, section, request):
    profile, s = summary  # paper: 86%
    _known_miss(request, profile, section, "distilled_gain")
    assert _cell(s, section, "distilled", "gain_recovered_pct") >= 50.0


@pytest.mark.parametrize("section", CLAIM_DATASETS)
def test_soft_targets_recover_at_least_half_of_the_3pct_gap(summary, section):
    _, s = summary  # paper: 87%
    assert _cell(s, section, "soft_3", "gap_recovered_pct") >= 50.0


# ---- section 5 (issue: specialists): adding specialists does not make the generalist worse (mean over seeds)
@pytest.mark.parametrize("dataset", ["fashion_mnist", "speech"])
def test_specialists_do_not_hurt_the_generalist(summary, dataset, request):
    profile, s = summary
    _known_miss(request, profile, dataset, "specialists")
    gen = _cell(s, "specialists", f"{dataset}/generalist", "test_accuracy_pct")
    assert _cell(s, "specialists", f"{dataset}/with_specialists", "test_accuracy_pct") >= gen
