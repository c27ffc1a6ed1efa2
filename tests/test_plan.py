"""The job plan: every job's config in one place, and only a job's own config decides when it reruns."""
import copy
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO

from kdbench import layout, plan
from kdbench.engine import losses, train

SMOKE = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
QUICK = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
PAPER = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
ROWS = tuple(SMOKE["ensembles"]["datasets"])


@pytest.mark.parametrize("cfg", [SMOKE, QUICK, PAPER], ids=["smoke", "quick", "paper"])
def test_every_planned_job_resolves_and_reads_only_files_something_makes(cfg):
    jobs = plan.jobs(cfg)
    runs = layout.runs(cfg["profile"])
    made = {str(layout.train_logits(runs, t)) for t in plan.teachers(cfg, jobs)} | {
        str(layout.model(runs, n)) for n in jobs} | {
        str(layout.ensemble_teacher(runs, ds, w))
        for ds in cfg["ensembles"]["datasets"] for w in ("ensemble", "single")}
    for job in jobs.values():
        train.resolve(job.config, where=job.name)
        assert job.dataset == job.config["dataset"]
        for path in [job.teacher, job.teacher_model]:
            assert path is None or path in made, (job.name, path)
            assert path is None or not Path(path).is_absolute()
        if job.temperature_from:
            assert job.temperature_from.startswith(str(layout.results(cfg["profile"]) / "variants"))
    assert all(t in jobs for t in plan.teachers(cfg, jobs))


def _with(cfg, **changes):
    out = copy.deepcopy(cfg)
    for dotted, value in changes.items():
        *path, key = dotted.split(".")
        node = out
        for p in path:
            node = node[p]
        node[key] = value
    return out


def test_adding_a_variant_adds_its_jobs_in_every_distillation_experiment_and_changes_no_other_job():
    before = plan.jobs(_with(SMOKE, variants=["hinton", "soft_only"]))
    after = plan.jobs(_with(SMOKE, variants=["hinton", "soft_only", "fitnets"]))
    assert {n: j for n, j in after.items() if n in before} == before
    added = sorted(set(after) - set(before))
    assert added == sorted(f"variants/{e}/fitnets" for e in
                           ["mnist_distilled_T20", "mnist_w30_bestT"] +
                           [f"{ds}_{k}" for ds in ROWS
                            for k in ("distilled_bestT", "soft3")])
    born = plan.jobs(_with(SMOKE, variants=["hinton", "soft_only", "born_again"]))
    assert {n.rsplit("/", 1)[-1] for n in set(born) - set(before)} == {"born_again", "hard"}  # its teacher too


def test_a_second_variant_file_adds_only_its_variants_jobs_and_each_job_needs_only_its_own_file(tmp_path):
    """Issue 24: every variant job's config and inputs carry the one file that registers its variant (a built-in
    none), so adding a second user file leaves the first file's jobs, and every built-in's, exactly as they were."""
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    head = "from kdbench.engine.losses import hinton, register\n\n"
    first.write_text(head + "@register('first_kd', temperature=4.0, hard_weight=0.1)\n"
                     "def first_kd(s, y, t, temperature, hard_weight):\n"
                     "    return hinton(s, y, t, temperature, hard_weight, 'arithmetic')\n")
    second.write_text(head + "@register('second_kd', temperature=4.0, hard_weight=0.2)\n"
                      "def second_kd(s, y, t, temperature, hard_weight):\n"
                      "    return hinton(s, y, t, temperature, hard_weight, 'arithmetic')\n")
    one = _with(SMOKE, variant_modules=[str(first)], variants=["hinton", "hard", "first_kd"])
    two = _with(SMOKE, variant_modules=[str(first), str(second)], variants=["hinton", "hard", "first_kd", "second_kd"])
    losses.load_modules([first, second])  # as the workflow's profile check does before it plans
    before, after = plan.jobs(one), plan.jobs(two)
    assert {n: j for n, j in after.items() if n in before} == before
    added = set(after) - set(before)
    assert added and all(n.endswith("/second_kd") for n in added)
    for job in after.values():
        own = [str(first)] if job.name.endswith("/first_kd") else [str(second)] if job.name in added else []
        assert list(job.modules) == own == job.config.get("variant_modules", []), job.name


@pytest.mark.parametrize("change", [{"mnist.omit3.paper_shift": 2.0}, {"mnist.only78.shift_grid": [0, -1]},
                                    {"specialists.combine.steps": 7}, {"specialists.top_n": 2},
                                    {"variant_experiments.mnist_bestT_width": 30}])
def test_a_table_only_setting_changes_no_job(change):
    assert plan.jobs(_with(SMOKE, **change)) == plan.jobs(SMOKE)


def test_a_recipe_change_changes_exactly_the_jobs_that_use_it():
    base = plan.jobs(SMOKE)
    changed = plan.jobs(_with(SMOKE, **{"ensembles.fraction.soft.temperature": 4.0}))
    differ = sorted(n for n in base if base[n] != changed[n])
    # the Table 5 soft-target nets and every variant's run in the Table 5 experiments that takes a temperature
    assert differ and all("soft3" in n for n in differ)
    assert {n for n in differ if n.startswith("ensembles/")} == {f"ensembles/{ds}/{s}" for ds in ROWS
                                                                 for s in ("soft3", "soft3_mixup")}
    assert not any(n.endswith("/hard") for n in differ)


def test_the_smoke_plan_has_every_system_once_with_distinct_seeds():
    """Counts that follow from the config alone, checked without running anything."""
    from kdbench.sections import ensembles, mnist
    jobs = plan.jobs(SMOKE)
    assert len(mnist.sweep_systems(SMOKE)) == 18 and set(mnist.systems(SMOKE)) <= set(jobs)
    seeds = ensembles.ensemble_seeds(SMOKE)
    assert len(seeds) == len(set(seeds)) == len(ensembles.seeds(SMOKE)) * SMOKE["ensembles"]["members"]
    assert not set(seeds) & (set(SMOKE["seeds"]) | set(ensembles.seeds(SMOKE)))  # never a student's init
    for ds in SMOKE["ensembles"]["datasets"]:
        assert list(jobs[f"ensembles/{ds}/ensemble"].seeds) == seeds
        assert {n for n in jobs if n.startswith(f"ensembles/{ds}/")} == {
            f"ensembles/{ds}/{s}" for s in ensembles.systems(SMOKE)}


def test_the_specialists_generalist_is_planned_with_the_sections_seeds_and_its_own_recipe():
    from kdbench.sections import specialists
    cfg = _with(SMOKE, **{"specialists.seeds": [3, 4, 5], "specialists.generalist": {"epochs": 7}})
    cfg["specialists"]["datasets"]["fashion_mnist"] = {"generalist": {"widths": [784, 16, 10]}}
    job = plan.jobs(cfg)["specialists/fashion_mnist/generalist"]
    assert job.seeds == (3, 4, 5) and job.config["widths"] == [784, 16, 10] and job.config["epochs"] == 7
    spec = specialists.train_config(cfg, "fashion_mnist", [0, 6])
    assert spec["init_from"].endswith("specialists/fashion_mnist/generalist/model.pt")
    assert spec["init_members"] == [0, 1, 2] and spec["widths"] == [784, 16, 3] and spec["epochs"] != 7
    # the section's own seeds and generalist change none of the other sections' jobs
    assert {n: j for n, j in plan.jobs(cfg).items() if "specialists/" not in n} == {
        n: j for n, j in plan.jobs(SMOKE).items() if "specialists/" not in n}


def test_the_ensembles_section_trains_its_own_seeds_and_so_do_the_variants_of_its_experiments():
    from kdbench.sections import ensembles, variants
    cfg = _with(SMOKE, **{"ensembles.seeds": [4, 7, 9, 11]})
    jobs = plan.jobs(cfg)
    members = cfg["ensembles"]["members"]
    for ds in ROWS:
        assert jobs[f"ensembles/{ds}/ensemble"].seeds == tuple(
            1000 + 100 * s + m for s in (4, 7, 9, 11) for m in range(members))
        for system in ensembles.systems(cfg)[1:]:
            assert jobs[f"ensembles/{ds}/{system}"].seeds == (4, 7, 9, 11), system
        for kind in ("distilled_bestT", "soft3"):
            assert jobs[f"variants/{ds}_{kind}/hard"].seeds == (4, 7, 9, 11)
        # seed i's 100%-data net is member 0 of ensemble i, wherever the seeds start
        assert jobs[f"variants/{ds}_soft3/fitnets"].config["teacher_members"] == [0, members, 2 * members, 3 * members]
    choice = variants.choice_config(cfg, variants.by_name(cfg)["speech_distilled_bestT"])
    assert choice["seeds"] == [4, 7, 9, 11]
    # the MNIST section and its variants keep the profile's seeds, unchanged; without its own, the section has those
    assert {n: j for n, j in jobs.items() if "mnist" in n and "fashion" not in n} == {
        n: j for n, j in plan.jobs(SMOKE).items() if "mnist" in n and "fashion" not in n}
    assert ensembles.seeds(_with(SMOKE, **{"ensembles.seeds": None})) == SMOKE["seeds"]


@pytest.mark.parametrize("cfg", [SMOKE, QUICK, PAPER], ids=["smoke", "quick", "paper"])
def test_every_planned_job_has_exactly_one_training_rule_and_a_new_seed_list_gets_its_own(cfg):
    """train.smk makes one rule per seed list (plan.train_rules): a job whose seeds no rule lists would be planned but
    never made, and two rules with one list would make the same files."""
    jobs = plan.jobs(cfg)
    rules = plan.train_rules(cfg, jobs)
    assert rules["train"] == list(cfg["seeds"])
    assert len({tuple(s) for s in rules.values()}) == len(rules)
    assert all(sum(list(j.seeds) == s for s in rules.values()) == 1 for j in jobs.values())
    odd = plan.Job("mysection/net", (7, 8), "mnist", {})
    more = plan.train_rules(cfg, {**jobs, odd.name: odd})
    (new,) = set(more) - set(rules)
    assert more == {**rules, new: [7, 8]} and new.startswith("train_"), more


def test_kdbench_plan_lists_the_jobs(capsys):
    from kdbench.cli import main
    assert main(["plan", str(REPO / ".test" / "config.yaml"), "--configs"]) == 0
    out = capsys.readouterr().out.splitlines()
    count = next(i for i, line in enumerate(out) if line.startswith(f"{len(plan.jobs(SMOKE))} training jobs (plus"))
    # and how long the jobs to train here should take (issue 25), or that none is left
    assert ("training jobs of profile 'smoke' to run" in out[count + 1]
            or out[count + 1] == "every planned job has its run records, weights and logits here: nothing to train")
    fit = next(line for line in out if line.startswith("variants/speech_soft3/fitnets "))
    assert '"teacher_members": [0, 3, 6]' in fit and "seeds=[0, 1, 2]" in fit


def test_specialists_with_soft_targets_learn_from_their_generalists_cached_logits():
    from kdbench.sections import specialists
    soft = {"temperature": 2.0, "hard_weight": 0.5}
    cfg = _with(SMOKE, **{"specialists.soft_targets": soft})
    cfg["specialists"]["datasets"]["speech"] = {**cfg["specialists"]["datasets"]["speech"], "soft_targets": None}
    spec = specialists.train_config(cfg, "fashion_mnist", [0, 6])
    gen = "specialists/fashion_mnist/generalist"
    assert spec["variant"] == "hinton" and spec["variant_params"] == soft and spec["teacher_pairing"] == "paired"
    assert spec["teacher_logits"] == str(layout.train_logits(layout.runs("smoke"), gen))
    train.resolve(spec, where="specialist")
    # the generalist's logits are cached for them; a dataset that turns soft targets off trains on hard ones alone
    assert gen in plan.teachers(cfg, plan.jobs(cfg)) and gen not in plan.teachers(SMOKE, plan.jobs(SMOKE))
    assert "specialists/speech/generalist" not in plan.teachers(cfg, plan.jobs(cfg))
    assert "teacher_logits" not in specialists.train_config(cfg, "speech", [0, 6])
    assert "variant" not in specialists.train_config(SMOKE, "fashion_mnist", [0, 6])


def test_a_rows_bootstrap_bags_its_ensembles_members_only():
    """`bootstrap` on an ensembles row: the members train on their own resamples; the distilled, 3% and variants'
    nets and the specialists' generalist learn from all their data; every planned config resolves."""
    from kdbench.sections import specialists
    cfg = copy.deepcopy(SMOKE)
    cfg["ensembles"]["datasets"]["speech"] = {**(cfg["ensembles"]["datasets"]["speech"] or {}), "bootstrap": True}
    jobs = plan.jobs(cfg)
    assert jobs["ensembles/speech/ensemble"].config["bootstrap"] is True
    others = [n for n in jobs if n.startswith(("ensembles/speech/", "variants/speech_", "specialists/speech/"))
              and n != "ensembles/speech/ensemble"]
    assert len(others) > 8 and not any(jobs[n].config.get("bootstrap") for n in others), others
    for n in others:
        train.resolve(jobs[n].config, where=n)
    assert "bootstrap" not in specialists.train_config(cfg, "speech", [0, 6])
    # the other rows keep their members as they were
    ens = "ensembles/fashion_mnist/ensemble"
    assert jobs[ens].config == plan.jobs(SMOKE)[ens].config


def test_mixup_adds_its_own_pair_of_3pct_nets_and_changes_no_paper_protocol_job():
    """`ensembles.fraction.mixup` adds `base3_mixup` / `soft3_mixup` per row: both mix their inputs, the soft one
    reads its teacher's model.pt (it runs live on the mixed inputs), not a cache. Every job of the profile without
    the key (the paper-protocol `base3` / `soft3` and the Table 5 variants' students among them) stays as it was."""
    off = copy.deepcopy(SMOKE)
    off["ensembles"]["fraction"].pop("mixup", None)
    base = plan.jobs(off)
    jobs = plan.jobs(_with(off, **{"ensembles.fraction.mixup": 0.4}))
    assert all(jobs[n] == base[n] for n in base)
    assert set(jobs) - set(base) == {f"ensembles/{ds}/{s}_mixup" for ds in ROWS for s in ("base3", "soft3")}
    assert not any("mixup" in j.config for j in base.values())
    for ds in ROWS:
        soft, hard = jobs[f"ensembles/{ds}/soft3_mixup"], jobs[f"ensembles/{ds}/base3_mixup"]
        assert soft.config["mixup"] == hard.config["mixup"] == 0.4
        assert soft.teacher is None and soft.teacher_model == str(layout.model(layout.runs("smoke"),
                                                                               f"ensembles/{ds}/ensemble"))
        m = SMOKE["ensembles"]["members"]  # member 0 of each seed's ensemble
        n_seeds = len(SMOKE["ensembles"].get("seeds") or SMOKE["seeds"])
        assert soft.config["teacher_members"] == [i * m for i in range(n_seeds)]
        assert soft.teacher_model in soft.inputs()
        paper = jobs[f"ensembles/{ds}/soft3"]
        assert "mixup" not in paper.config and paper.teacher.endswith(f"{ds}/teacher_single.pt")
        assert {k: v for k, v in soft.config.items() if k not in ("mixup", "teacher_model", "teacher_members")} == {
            k: v for k, v in paper.config.items() if k != "teacher_logits"}
    for name, job in jobs.items():
        train.resolve(job.config, where=name)


def test_kdbench_plan_selects_a_piece_and_prints_its_targets(capsys):
    """A run too long for one sitting goes in pieces: `--jobs` keeps the jobs whose names match a shell pattern,
    `--targets` prints their run records, the snakemake targets that train them and what they need."""
    from kdbench.cli import main
    smoke = str(REPO / ".test" / "config.yaml")
    wanted = sorted(n for n in plan.jobs(SMOKE) if n.startswith("variants/mnist_") or n == "teacher")
    assert main(["plan", smoke, "--jobs", "variants/mnist_*", "teacher"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in out[:len(wanted)]) == wanted
    assert out[len(wanted)].startswith(f"{len(wanted)} of the {len(plan.jobs(SMOKE))} training jobs match")
    assert main(["plan", smoke, "--jobs", "variants/mnist_*", "teacher", "--targets"]) == 0
    targets = capsys.readouterr().out.split()
    # `--jobs A --jobs B` (benchmarks/workflow.py's form) selects the same piece: the patterns add up, none is dropped
    assert main(["plan", smoke, "--jobs", "variants/mnist_*", "--jobs", "teacher", "--targets"]) == 0
    assert capsys.readouterr().out.split() == targets
    runs = layout.runs("smoke")
    assert targets == [str(layout.metrics(runs, n, s)) for n, j in plan.jobs(SMOKE).items() if n in wanted
                       for s in j.seeds]
    assert main(["plan", smoke, "--jobs", "variant/*"]) == 1  # a misspelt pattern matches nothing: said, with a fix
    assert "no planned job matches variant/*. Fix:" in capsys.readouterr().err
