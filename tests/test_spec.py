"""A job's typed spec (issue 38): each key stated once, nested by part; every planned job and every committed record
reads into it and back without a byte changed; the engine trains from it and nothing edits it."""
import dataclasses
import json
from pathlib import Path

import pytest
from workflow_helpers import REPO

from kdbench import plan, profile, records, spec
from kdbench.engine import config, train
from kdbench.spec import TrainSpec

PROFILES = [REPO / ".test" / "config.yaml", REPO / "config" / "quick.yaml", REPO / "config" / "config.yaml"]


def test_each_key_is_one_field_of_one_part_and_the_keys_are_read_off_the_fields():
    names = [f.name for kind in spec.PARTS.values() for f in dataclasses.fields(kind)]
    assert len(names) == len(set(names)) == len(spec.KEYS)
    for part, kind in spec.PARTS.items():
        for f in dataclasses.fields(kind):
            assert spec.KEYS[f.name].part == part and f.metadata["key"].schema == spec.KEYS[f.name].schema
    assert [f.name for f in dataclasses.fields(TrainSpec)] == list(spec.PARTS)
    assert config.KEYS is spec.KEYS and config.DEFAULTS is spec.DEFAULTS  # the engine's names are the spec's
    assert TrainSpec().config() == spec.DEFAULTS


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name if p.parent.name == "config" else ".test")
def test_every_planned_job_is_its_spec_and_back_byte_for_byte(path):
    """The plan's resolved config of each job, turned into the typed spec and back, is the same mapping, the same
    JSON and the same hash: the records a spec writes are the records the flat config wrote."""
    jobs = plan.jobs(profile.load(path))
    assert len(jobs) > 10
    for job in jobs.values():
        flat = config.resolve(job.config, where=job.name)
        typed = config.resolve_spec(job.config, where=job.name)
        assert typed.config() == flat, job.name
        assert json.dumps(typed.config(), sort_keys=True) == json.dumps(flat, sort_keys=True)
        assert records.config_hash(typed.config()) == records.config_hash(flat)
        assert typed.optimisation.epochs == flat["epochs"] and typed.distillation.variant == flat["variant"]


def test_every_committed_record_reads_into_the_spec_and_keeps_its_values():
    """A committed run's config reads into today's spec (records.record_spec) without a value changed; the keys an
    old record predates take their defaults, and only those."""
    paths = sorted(Path(REPO / "results").glob("*/runs/**/metrics.json"))
    assert len(paths) > 500
    predated = set()
    for path in paths:
        cfg = json.loads(path.read_text())["config"]
        typed = records.record_spec(cfg).config()
        assert {k: typed[k] for k in cfg} == cfg, path
        assert all(typed[k] == spec.DEFAULTS[k] for k in set(typed) - set(cfg)), path
        predated |= set(typed) - set(cfg)
    assert predated <= {"extensions", "model_params", "val_every"}
    with pytest.raises(ValueError, match=r"\['learning_rate'\]"):
        records.record_spec({**json.loads(paths[0].read_text())["config"], "learning_rate": 0.1})


def test_a_spec_is_not_edited_after_it_is_made_and_the_engine_takes_nothing_else(tmp_path):
    typed = config.resolve_spec({"epochs": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.optimisation.epochs = 2
    with pytest.raises(TypeError, match=r"not dict.*Fix: .*resolve_spec"):
        train.train({"epochs": 1}, [0], tmp_path / "run", device="cpu", root=tmp_path, progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(config.ConfigError, match="lr must be a number > 0"):  # a spec made by hand is checked too
        config.resolve_spec(dataclasses.replace(typed, optimisation=spec.OptimSpec(lr=-1.0)))
    with pytest.raises(ValueError, match=r"missing \['epochs'\]"):
        TrainSpec.from_config({k: v for k, v in spec.DEFAULTS.items() if k != "epochs"})
