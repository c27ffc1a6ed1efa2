"""Tuned variants (issue 37 item 3): a variant with a grid in the profile trains one student per setting in every
distillation experiment, and the variants table chooses its setting per experiment on validation, by the rule that
experiment uses for hinton's temperature, and says which setting and grid."""
import json

import pytest
import yaml
from conftest import REPO

from kdbench import layout, profile
from kdbench.sections import variants

SMOKE = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())


def _cfg(grids=None, names=("hinton", "hard", "dkd")):
    return {**SMOKE, "variants": list(names), "variant_params": {},
            "variant_grids": {"dkd": {"beta": [2.0, 8.0]}} if grids is None else grids}


def test_a_grid_trains_one_student_per_setting_with_its_own_parameters():
    cfg = _cfg()
    jobs = {j.name: j for j in variants.jobs(cfg)}
    for exp in variants.experiments(cfg):
        base = f"variants/{exp.name}/dkd"
        assert base not in jobs  # no untuned run beside the grid
        for beta in (2.0, 8.0):
            job = jobs[f"{base}/beta={beta:g}"]
            # its own defaults and the point: never the experiment's temperature (T=20 for the 800-800 student)
            assert job.config["variant_params"] == {"beta": beta}, job.config
            assert job.temperature_from is None and job.seeds == exp.seeds
            assert job.config["teacher_logits"] == exp.teacher_logits or exp.base.get("mixup")
    # a variant without a grid runs once, as before
    assert all(f"variants/{e.name}/hard" in jobs for e in variants.experiments(cfg))


def test_a_grid_of_two_parameters_is_their_product_in_the_profiles_order():
    cfg = _cfg({"dist": {"tau": [1, 4], "beta": [1, 2]}}, names=("hinton", "dist"))
    assert [variants.setting_name(p) for p in variants.grid(cfg, "dist")] == [
        "tau=1,beta=1", "tau=1,beta=2", "tau=4,beta=1", "tau=4,beta=2"]
    assert variants.grid(cfg, "hinton") == []


@pytest.mark.parametrize("grids, message", [
    ({"hinton": {"temperature": [2, 4]}}, "variant_grids: 'hinton' is not one of the variants run beside hinton"),
    ({"nkd": {"gamma": [1, 2]}}, "variant_grids: 'nkd' is not one of the variants run beside hinton"),
    ({"dkd": {"gama": [1, 2]}}, "variant_grids.dkd: variant 'dkd' has no parameter(s) ['gama']"),
    ({"dkd": {"temperature": [4, 0]}}, "variant_grids.dkd: variant 'dkd': temperature must be a number > 0"),
    ({"dkd": {"beta": ["eight"]}}, "variant_grids.dkd: variant 'dkd': beta must be a finite number"),
])
def test_a_bad_grid_is_named_by_its_place_in_the_profile(grids, message):
    with pytest.raises(ValueError, match="Fix:") as e:
        profile.planned_jobs(_cfg(grids))
    assert message in str(e.value), str(e.value)


def _record(runs, job, seed, val_errors, test_errors=100, val_examples=1000, final_epoch=None, params=None):
    path = layout.metrics(runs, job, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"val_errors": val_errors, "final_epoch": final_epoch or len(val_errors),
                                "val_examples": val_examples, "test_errors": test_errors, "test_accuracy": 0.99,
                                "config": {"variant_params": params or {}}}))


def _tuned(rule, default="beta=8"):
    return {"settings": {"beta=2": "v/b2", "beta=4": "v/b4", "beta=8": "v/b8"}, "default": default, "rule": rule,
            "grid": {"beta": [2, 4, 8]}}


@pytest.mark.parametrize("errors, rule, chosen", [
    ({"v/b2": [50, 52], "v/b4": [49, 51], "v/b8": [55, 55]}, "mean", "beta=4"),   # the fewest, mean over seeds
    ({"v/b2": [50, 50], "v/b4": [50, 50], "v/b8": [60, 60]}, "mean", "beta=2"),   # a tie: the earlier setting
    # one_se on 2,000 pooled examples: the best 5.0%, SE 0.49 points; the default's 5.4% ties and wins
    ({"v/b2": [50, 50], "v/b4": [60, 60], "v/b8": [54, 54]}, "one_se", "beta=8"),
    ({"v/b2": [50, 50], "v/b4": [60, 60], "v/b8": [56, 56]}, "one_se", "beta=2"),  # 5.6%: beyond one SE
])
def test_the_setting_is_chosen_on_validation_by_the_experiments_rule(tmp_path, errors, rule, chosen):
    for job, per_seed in errors.items():
        for seed, e in enumerate(per_seed):
            _record(tmp_path, job, seed, [999, e])
    best, scores = variants.choose_setting(_tuned(rule), [0, 1], tmp_path)
    assert best == chosen, scores
    assert scores["beta=2"] == pytest.approx(100 * sum(errors["v/b2"]) / 2 / 1000)


def test_a_kept_best_epoch_is_the_validation_error_that_counts(tmp_path):
    """With keep_best the run is its best-validation epoch: its error there, not at the last epoch, decides."""
    _record(tmp_path, "v/b2", 0, [40, 80], final_epoch=1)
    _record(tmp_path, "v/b4", 0, [60, 60])
    _record(tmp_path, "v/b8", 0, [70, 70])
    assert variants.choose_setting(_tuned("mean"), [0], tmp_path)[0] == "beta=2"


def test_the_table_reports_the_chosen_settings_run_with_its_grid(tmp_path):
    cfg = _cfg()
    spec = variants.table_config(cfg, tables=("mnist",), name="variants_mnist")
    runs = tmp_path / "runs"
    for exp in spec["experiments"]:
        for s in exp["seeds"]:
            for job in exp["jobs"].values():
                _record(runs, job, s, [100], test_errors=150)
            tuned = exp["tuned"]["dkd"]
            _record(runs, tuned["settings"]["beta=2"], s, [90], test_errors=140, params={"beta": 2.0})
            _record(runs, tuned["settings"]["beta=8"], s, [80], test_errors=120 + s, params={"beta": 8.0})
    df = variants.table(spec, runs)
    dkd = df[df.variant == "dkd"]
    assert list(dkd.setting) == ["beta=8"] * len(spec["experiments"])
    assert set(dkd.grid) == {"beta in {2, 8}"}
    assert all("/dkd/beta=8/" in src for src in dkd.sources)
    assert list(dkd["mean"]) == [120 + (len(spec["experiments"][0]["seeds"]) - 1) / 2] * len(dkd)
    assert json.loads(dkd.val_error_pct_by_setting.iloc[0]) == {"beta=2": 9.0, "beta=8": 8.0}
    assert (df[df.variant != "dkd"].setting == "").all()
    text = variants.markdown(df, spec)
    assert "`beta=8`" in text and "`dkd` over beta in {2, 8}" in text, text
    assert "each tuned variant uses its own validation-chosen setting instead" in text


def test_a_profile_without_grids_keeps_its_tables_columns(tmp_path):
    """No grid: no setting columns, so that the tables of a profile without tuned variants read as before."""
    spec = variants.table_config(_cfg({}), tables=("mnist",))
    assert all("tuned" not in e for e in spec["experiments"])
