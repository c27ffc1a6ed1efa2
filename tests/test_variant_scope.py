"""`variant_scope`: a variant that runs in some distillation experiments only (by name or table group), e.g. a piece
of a regeneration too long for one sitting, or a variant that only makes sense on images. The plan trains it there
alone, its table rows exist there alone, and the Markdown says where it does not run."""
import json

import pytest
import yaml
from conftest import REPO

from kdbench import layout, profile
from kdbench.sections import variants

SMOKE = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
SCOPE = {"born_again": ["speech_narrow_soft3"], "dkd": ["mnist", "speech_soft3"]}


def _cfg(scope=SCOPE):
    return {**SMOKE, "variants": ["hinton", "born_again", "dkd", "fitnets"], "variant_params": {},
            "variant_grids": {}, "variant_scope": scope}


def _where(jobs, variant):
    return {name.split("/")[1] for name in jobs if name.split("/")[2:3] == [variant]}


def test_a_scoped_variant_trains_in_its_experiments_alone():
    everywhere = {e.name for e in variants.experiments(SMOKE)}
    jobs = [j.name for j in variants.jobs(_cfg())]
    assert _where(jobs, "dkd") == {"mnist_distilled_T20", "mnist_w30_bestT", "speech_soft3"}  # a group and a name
    assert _where(jobs, "born_again") == {"speech_narrow_soft3"}
    assert _where(jobs, "hard") == {"speech_narrow_soft3"}  # born-again's teacher, where born_again runs
    assert _where(jobs, "fitnets") == everywhere  # not named: every experiment
    assert len(jobs) == len(set(jobs))


def test_no_scope_plans_and_tabulates_as_before():
    """A profile without `variant_scope` (or with an empty one) has the same jobs and the same table spec, so its
    committed runs and tables stay the plan's."""
    bare = {k: v for k, v in _cfg().items() if k != "variant_scope"}
    assert [j.name for j in variants.jobs(bare)] == [j.name for j in variants.jobs(_cfg({}))]
    assert variants.table_config(bare) == variants.table_config(_cfg({}))
    assert len(variants.jobs(bare)) > len(variants.jobs(_cfg()))


def _record(runs, job, seed, test_errors, accuracy):
    path = layout.metrics(runs, job, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"test_errors": test_errors, "test_accuracy": accuracy, "val_errors": [1],
                                "final_epoch": 1, "val_examples": 10, "config": {"variant_params": {}}}))


def test_the_tables_have_a_scoped_variants_rows_where_it_runs_and_say_where_it_does_not(tmp_path):
    cfg = _cfg()
    spec = variants.table_config(cfg)
    runs = tmp_path / "runs"
    for exp in spec["experiments"]:
        for s in exp["seeds"]:
            for variant, job in exp["jobs"].items():
                _record(runs, job, s, 100 + s + (variant == "dkd"), 0.8 + 0.01 * s)
    df = variants.table(spec, runs)
    assert set(df[df.variant == "dkd"].experiment) == {"mnist_distilled_T20", "mnist_w30_bestT", "speech_soft3"}
    assert set(df[df.variant == "born_again"].experiment) == {"speech_narrow_soft3"}
    assert len(df[df.variant == "fitnets"]) == len(spec["experiments"])
    board = variants.leaderboard(df).set_index("variant")
    assert board.loc["dkd", "experiments"] == 3 and board.loc["born_again", "experiments"] == 1
    text = variants.markdown(df, spec)
    table1 = text.split("## Students of the ensembles")[1].split("##")[0]
    dkd_row = next(line for line in table1.splitlines() if line.startswith("| dkd |"))
    assert dkd_row.count(variants.NOT_RUN) == 4, dkd_row  # the four Table 1 students: none is in its scope
    assert "the variant does not run in that experiment (the profile's `variant_scope`)" in table1
    mnist = {line.split(" |")[0]: line for line in text.split("## MNIST students")[1].split("##")[0].splitlines()
             if line.startswith("| ")}
    assert mnist["| dkd"].count(variants.NOT_RUN) == 0 and mnist["| born_again"].count(variants.NOT_RUN) == 2


@pytest.mark.parametrize("scope, message", [
    ({"hinton": ["mnist"]}, "variant_scope: 'hinton' is not one of the variants run beside hinton"),
    ({"nkd": ["mnist"]}, "variant_scope: 'nkd' is not one of the variants run beside hinton"),
    ({"dkd": ["speech_sof3"]}, "variant_scope.dkd: 'speech_sof3' is no distillation experiment of this profile "
                               "(did you mean 'speech_soft3'?)"),
    ({"dkd": ["table9"]}, "variant_scope.dkd: 'table9' is no distillation experiment of this profile"),
])
def test_a_bad_scope_is_named_by_its_place_in_the_profile(scope, message):
    with pytest.raises(ValueError, match="Fix:") as e:
        profile.planned_jobs(_cfg(scope))
    assert message in str(e.value), str(e.value)


def test_the_profile_schema_takes_a_scope_and_refuses_an_empty_one(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_cfg()))
    assert _where(profile.check(profile.load(good)), "born_again") == {"speech_narrow_soft3"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_cfg({"dkd": []})))
    with pytest.raises(profile.ProfileError, match="variant_scope"):
        profile.validate(profile.load(bad))
