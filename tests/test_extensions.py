"""Issue 24: a dataset is one registry entry plus a profile entry, a model family is one file, a section one file
plus its profile block: each test writes the extension a user would, in one file, and trains on it (the dataset
and the section through the workflow, the model on MNIST)."""
import json
import re
import subprocess
import sys

import torch
import yaml
from workflow_helpers import SMOKE, snakemake

BLOBS = '''
"""A synthetic dataset: four Gaussian blobs in 16 dimensions, generated once into ROOT/Blobs/blobs.pt."""
from pathlib import Path

import torch

from kdbench.data import registry
from kdbench.records import atomic_torch_save


def files(root):
    return [Path(root) / "Blobs" / "blobs.pt"]


def fetch(root, mirror=None, allow_download=True):
    if files(root)[0].exists():
        return
    g = torch.Generator().manual_seed(0)
    centres = 3.0 * torch.randn(4, 16, generator=g)
    y = torch.arange(1600) % 4
    x = centres[y] + torch.randn(1600, 16, generator=g)
    atomic_torch_save(files(root)[0], {"x": x, "y": y})


def load(train, root, device):
    fetch(root)
    blob = torch.load(files(root)[0])
    part = slice(0, 1200) if train else slice(1200, None)
    return registry.TensorSplit(blob["x"][part].to(device), blob["y"][part].to(device), "blobs")


registry.register(registry.Dataset("blobs", "Four blobs", ("a", "b", "c", "d"), (16,), 1200, "examples",
                                   files=files, fetch=fetch, load=load))
'''

TINY_CNN = '''
"""A small CNN family: K members, each conv(1->channels, kernel x kernel, stride 2) -> ReLU -> linear, on images;
its own settings `channels` and `kernel` (model_params), not widths (widths: [input size, classes]). Every parameter
is stacked by member (K, ...), as kdbench's families are: the K members run as one grouped convolution and one
batched product."""
import math

import torch
from torch import nn
from torch.nn import functional as F

from kdbench.data import registry
from kdbench.engine import models


@models.register("tiny_cnn")
class TinyCNN(nn.Module):
    PARAMS = {"channels": 8, "kernel": 3}

    def __init__(self, widths, members, seeds, input_shape, channels, kernel):
        super().__init__()
        self.widths, self.members, self.seeds, self.input_shape = list(widths), members, list(seeds), input_shape
        self.channels, self.kernel = channels, kernel
        self.side = (input_shape[-1] + 1) // 2
        c_in, feats = input_shape[0], channels * self.side * self.side
        self.conv_w = nn.Parameter(torch.empty(members, channels, c_in, kernel, kernel))
        self.conv_b = nn.Parameter(torch.empty(members, channels))
        self.out_w = nn.Parameter(torch.empty(members, feats, widths[-1]))
        self.out_b = nn.Parameter(torch.empty(members, widths[-1]))
        with torch.no_grad():
            for k, seed in enumerate(self.seeds):  # member k from its own seed
                g = torch.Generator().manual_seed(seed)
                for p, fan_in in ((self.conv_w, c_in * kernel * kernel), (self.conv_b, c_in * kernel * kernel),
                                  (self.out_w, feats), (self.out_b, feats)):
                    p[k].uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=g)

    @classmethod
    def build(cls, cfg, seeds):
        return cls(cfg["widths"], len(seeds), seeds, registry.get(cfg["dataset"]).input_shape,
                   **cfg["model_params"])

    def forward(self, x, hidden=False):
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        k, b = x.shape[:2]
        c, h, w = self.input_shape
        images = x.reshape(k, b, c, h, w).transpose(0, 1).reshape(b, k * c, h, w)
        conv = F.conv2d(images, self.conv_w.reshape(k * self.channels, c, self.kernel, self.kernel),
                        self.conv_b.reshape(-1), stride=2, padding=self.kernel // 2, groups=k)
        feats = torch.relu(conv).reshape(b, k, -1).transpose(0, 1)  # (K, B, channels * side * side)
        logits = torch.baddbmm(self.out_b.unsqueeze(1), feats, self.out_w)
        return (logits, feats) if hidden else logits

    @property
    def feature_dim(self):
        return self.out_w.shape[1]

    def apply_max_norm(self):
        pass

    def config(self):
        return dict(widths=self.widths, members=self.members, seeds=self.seeds, input_shape=self.input_shape,
                    channels=self.channels, kernel=self.kernel)
'''

BLOBS_TABLE = '''
"""A section of one table: one net per seed on the blobs, its test accuracy (a user's section, in one file)."""
import json
from pathlib import Path

from kdbench import layout, sections
from kdbench.report import aggregate


@sections.register
class BlobsTable:
    NAME = "blobs_table"
    OUTPUTS = ["blobs_table.md"]
    SUMMARY = True
    SCHEMA = {"type": "object", "additionalProperties": False, "required": ["epochs"],
              "properties": {"epochs": {"type": "integer", "minimum": 1}}}
    CAPTION = "One net per seed on the four blobs: test accuracy."

    @staticmethod
    def jobs(cfg):
        config = {"dataset": "blobs", "widths": [16, 32, 4], "epochs": cfg["blobs_table"]["epochs"],
                  "val_size": 100, "lr": 0.05}
        return [sections.JobSpec("blobs_table/net", tuple(cfg["seeds"]), config)]

    @staticmethod
    def write(cfg, runs, out, paper, **_):
        cell = aggregate.Cell("blobs_table", "blobs", "net", "test_accuracy_pct", "pct")
        for seed in cfg["seeds"]:
            path = layout.metrics(runs, "blobs_table/net", seed)
            cell.values.append((seed, 100 * json.loads(Path(path).read_text())["test_accuracy"], str(path)))
        summary = aggregate.write_tables([cell], paper, out, "blobs_table")
        row = summary.iloc[0]
        (Path(out) / "blobs_table.md").write_text(f"| net | {row['mean']:.1f} +- {row['std']:.1f} |\\n")
        return f"blobs_table: {row['mean']:.1f}%"
'''


def test_a_section_from_one_file_and_its_profile_block_runs_through_the_workflow(tmp_path):
    """A user's section (one file, listed under `extensions`, and its block in the profile): the workflow checks the
    block against the section's schema, plans and trains its job, and makes its table with the aggregate rule that
    workflow/rules/sections.smk makes for it; `kdbench plan` lists its job."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "blobs.py").write_text(BLOBS)
    (work / "blobs_table.py").write_text(BLOBS_TABLE)
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["extensions"] = ["blobs.py", "blobs_table.py"]
    profile = work / "profile.yaml"
    profile.write_text(yaml.safe_dump(cfg))  # no block: the section's schema requires it
    target = "results/smoke/blobs_table.md"
    r = snakemake(work, target, data_root=tmp_path / "data", configfile=profile)
    assert r.returncode != 0 and "'blobs_table' is a required property" in r.stderr, (r.stdout + r.stderr)[-3000:]
    cfg["blobs_table"] = {"epoch": 2}  # misspelt: the section's own schema names it
    profile.write_text(yaml.safe_dump(cfg))
    r = snakemake(work, target, data_root=tmp_path / "data", configfile=profile)
    assert r.returncode != 0 and "blobs_table: unknown key(s) 'epoch' (did you mean 'epochs'?)" in r.stderr, \
        (r.stdout + r.stderr)[-3000:]
    cfg["blobs_table"] = {"epochs": 2}
    profile.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "kdbench.cli", "plan", str(profile)], cwd=work, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "blobs_table/net" in r.stdout, (r.stdout + r.stderr)[-3000:]
    r = snakemake(work, target, data_root=tmp_path / "data", configfile=profile)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "rule aggregate_blobs_table:" in r.stdout + r.stderr
    summary = (work / "results/smoke/blobs_table_summary.csv").read_text().splitlines()
    assert summary[1].startswith("blobs_table,blobs,net,test_accuracy_pct,") and ",2,pct" in summary[1], summary
    mean = float(summary[1].split(",")[5])
    assert mean > 90, summary  # well-separated blobs; chance is 25
    assert (work / "results/smoke/blobs_table.md").read_text().startswith(f"| net | {mean:.1f}")


def test_a_model_family_with_its_own_settings_trains_as_teacher_student_and_ensemble_member(tmp_path, all_data_root):
    """Issue 38: a CNN family with `channels` and `kernel` of its own (its file plus the profile's lines) is the
    MNIST section's teacher and its distilled student, and the Fashion-MNIST ensemble's members, through the
    workflow; each run records its settings."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "tiny_cnn.py").write_text(TINY_CNN)
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["extensions"] = ["tiny_cnn.py"]
    cnn = {"model": "tiny_cnn", "widths": [784, 10]}
    cfg["mnist"]["teacher"] = {**cnn, "model_params": {"channels": 6, "kernel": 5}, "epochs": 2, "lr": 0.05}
    cfg["mnist"]["distilled"].update(cnn, model_params={"channels": 2})
    cfg["ensembles"]["datasets"]["fashion_mnist"].update(cnn, model_params={"kernel": 3})
    profile = work / "profile.yaml"
    profile.write_text(yaml.safe_dump(cfg))
    r = snakemake(work, "-n", data_root=all_data_root, configfile=profile)  # the specialists need an MLP
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "specialists.datasets.fashion_mnist: its generalist is a 'tiny_cnn'" in out, out
    cfg["specialists"]["datasets"]["fashion_mnist"]["generalist"] = {"model": "mlp", "model_params": {},
                                                                     "widths": [784, 16, 10]}
    profile.write_text(yaml.safe_dump(cfg))
    runs = work / "results/smoke/runs"
    targets = ["results/smoke/runs/distilled_T20/model.pt",
               "results/smoke/runs/ensembles/fashion_mnist/ensemble/model.pt"]
    r = snakemake(work, *targets, data_root=all_data_root, configfile=profile)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    for job, params in (("teacher", {"channels": 6, "kernel": 5}), ("distilled_T20", {"channels": 2, "kernel": 3}),
                        ("ensembles/fashion_mnist/ensemble", {"channels": 8, "kernel": 3})):
        rec = json.loads(next((runs / job).glob("seed*/metrics.json")).read_text())
        assert rec["config"]["model"] == "tiny_cnn" and rec["config"]["model_params"] == params, (job, rec["config"])
        assert rec["test_accuracy"] > 0.5, (job, rec["test_accuracy"])  # chance is 0.1
    assert (runs / "teacher" / "train_logits.pt").exists()  # the student learnt from the CNN teacher's logits


def test_a_dataset_from_one_file_trains_through_the_workflow(tmp_path):
    """The dataset file and one profile entry: the workflow fetches it with its own rule and trains an ensemble on
    it, and the job's config names the file it depends on."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "blobs.py").write_text(BLOBS)
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["extensions"] = ["blobs.py"]
    cfg["ensembles"]["datasets"]["blobs"] = {"widths": [16, 32, 4], "epochs": 3, "val_size": 100, "lr": 0.05}
    profile = work / "profile.yaml"
    profile.write_text(yaml.safe_dump(cfg))
    target = "results/smoke/runs/ensembles/blobs/ensemble/model.pt"
    r = snakemake(work, target, data_root=tmp_path / "data", configfile=profile)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "rule fetch_blobs:" in r.stdout + r.stderr
    # before the first job, the run says what it will train (issue 25); no run on blobs was ever measured here,
    # on any CPU: no estimate, never "0 min" (issue 39)
    assert "kdbench: 1 training job of profile 'smoke' to run; no estimate: no run on blobs was measured" in r.stderr
    assert (tmp_path / "data" / "Blobs" / "blobs.pt").exists()
    run = work / "results/smoke/runs/ensembles/blobs/ensemble"
    assert json.loads((run / "config.json").read_text())["config"]["extensions"] == ["blobs.py"]
    accs = [json.loads(p.read_text())["test_accuracy"] for p in run.glob("seed*/metrics.json")]
    assert accs and min(accs) > 0.9, accs  # well-separated blobs; chance is 0.25


def test_a_model_family_from_one_file_trains_an_epoch_on_mnist(tmp_path, mnist_root):
    """The model file alone: `kdbench train` imports it from `extensions`, trains two members one epoch on MNIST,
    and the saved model loads back."""
    (tmp_path / "tiny_cnn.py").write_text(TINY_CNN)
    cfg = {"model": "tiny_cnn", "model_params": {"channels": 6, "kernel": 5}, "extensions": ["tiny_cnn.py"],
           "widths": [784, 10], "epochs": 1, "train_fraction": 0.25, "val_size": 1000, "lr": 0.05}
    r = subprocess.run([sys.executable, "-m", "kdbench.cli", "train", "--config-json", json.dumps(cfg),
                        "--seeds", "0", "1", "--out", "run", "--root", str(mnist_root), "--threads", "2"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    accs = [json.loads((tmp_path / "run" / f"seed{s}" / "metrics.json").read_text())["test_accuracy"]
            for s in (0, 1)]
    assert min(accs) > 0.85, accs
    blob = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert blob["model"] == "tiny_cnn" and blob["model_config"]["input_shape"] == (1, 28, 28)
    assert blob["model_config"]["channels"] == 6 and blob["state_dict"]["conv_w"].shape == (2, 6, 1, 5, 5)
    rec = json.loads((tmp_path / "run" / "seed0" / "metrics.json").read_text())
    assert rec["config"]["model_params"] == {"channels": 6, "kernel": 5}
    bad = {**cfg, "model_params": {"channels": 6, "kernels": 5}}
    r = subprocess.run([sys.executable, "-m", "kdbench.cli", "train", "--config-json", json.dumps(bad), "--seeds", "0",
                        "--out", "bad", "--root", str(mnist_root)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and "model 'tiny_cnn' has no setting(s) ['kernels']" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "bad").exists()


BLOBS_KD = '''
"""A section with a distillation experiment (a user's, in one file): a 32-unit net on the blobs teaches an 8-unit
one at T=4; every KD variant of the profile runs in it beside hinton."""
from pathlib import Path

from kdbench import layout, sections


def _student(cfg):
    runs = layout.runs(cfg["profile"])
    return {"dataset": "blobs", "widths": [16, 8, 4], "epochs": cfg["blobs_kd"]["epochs"], "val_size": 100,
            "lr": 0.05, "variant": "hinton", "variant_params": {"temperature": 4.0, "hard_weight": 0.1},
            "teacher_logits": str(layout.train_logits(runs, "blobs_kd/teacher"))}


@sections.register
class BlobsKD:
    NAME = "blobs_kd"
    OUTPUTS = ["blobs_kd.md"]
    SUMMARY = False
    SCHEMA = {"type": "object", "required": ["epochs"], "properties": {"epochs": {"type": "integer"}}}

    @staticmethod
    def jobs(cfg):
        teacher = {"dataset": "blobs", "widths": [16, 32, 4], "epochs": cfg["blobs_kd"]["epochs"], "val_size": 100,
                   "lr": 0.05}
        return [sections.JobSpec("blobs_kd/teacher", tuple(cfg["seeds"]), teacher),
                sections.JobSpec("blobs_kd/student", tuple(cfg["seeds"]), _student(cfg))]

    @staticmethod
    def distillation_experiments(cfg):
        runs = layout.runs(cfg["profile"])
        teacher = "blobs_kd/teacher"
        return [sections.Experiment("blobs_T4", "blobs", _student(cfg), str(layout.train_logits(runs, teacher)),
                                    str(layout.model(runs, teacher)), None, hinton_run="blobs_kd/student",
                                    seeds=tuple(cfg["seeds"]), metric="test_accuracy_pct",
                                    title="Blobs: an 8-unit student of a 32-unit net, test accuracy %")]

    @staticmethod
    def write(cfg, runs, out, paper, **_):
        (Path(out) / "blobs_kd.md").write_text("Its rows are in variants.md.\\n")
        return "blobs_kd: its rows are in variants.md"
'''


def test_a_section_with_a_distillation_experiment_gets_variant_rows_without_editing_variants_py(tmp_path):
    """Issue 38: a user's section declares a distillation experiment in its one file; the plan trains every variant's
    student in it (a dry run plans them through the training rule), and the variants table gives them a group of
    their own, titled by the section, beside the built-in groups."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "blobs.py").write_text(BLOBS)
    (work / "blobs_kd.py").write_text(BLOBS_KD)
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["extensions"] = ["blobs.py", "blobs_kd.py"]
    cfg["blobs_kd"] = {"epochs": 2}
    profile = work / "profile.yaml"
    profile.write_text(yaml.safe_dump(cfg))
    r = snakemake(work, "results/smoke/variants.md", "-n", data_root=tmp_path / "data", configfile=profile)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    planned = set(re.findall(r"^\s+wildcards: job=(\S+)", out, re.M))
    assert {f"variants/blobs_T4/{v}" for v in cfg["variants"] if v != "hinton"} <= planned, sorted(planned)
    assert "blobs_kd/student" in planned and "variants/blobs_T4/hinton" not in planned  # hinton is its own run
    script = '''
import json, random
from kdbench import layout, plan, profile
from kdbench.sections import variants
cfg = profile.load("profile.yaml")
plan.jobs(cfg)  # imports the profile's extensions, as the workflow does: the user's section registers
spec = variants.table_config(cfg)
runs = layout.runs(cfg["profile"])
for e in spec["experiments"]:
    for job in e["jobs"].values():
        for s in e["seeds"]:
            p = layout.metrics(runs, job, s)
            p.parent.mkdir(parents=True, exist_ok=True)
            rec = {"test_errors": 10, "test_accuracy": random.random(), "config": {"variant_params": {}}}
            p.write_text(json.dumps(rec))
print(variants.markdown(variants.table(spec, runs), spec))
'''
    r = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "## Blobs: an 8-unit student of a 32-unit net, test accuracy %" in r.stdout, r.stdout[-3000:]
    assert "| variant | blobs_T4 |" in r.stdout and "## MNIST students (section 3)" in r.stdout
