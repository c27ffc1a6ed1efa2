"""MLPs with K independent members evaluated in one batched forward pass.

What this file achieves: `MLP(widths, members=K, seeds=[...])` holds K fully independent ReLU networks (each with its
own seeded init, as `nn.Linear` would draw it) as stacked weights (K, fan_in, fan_out), so a forward pass over inputs
(K, B, D) is one `baddbmm` per layer. Seeds of one experiment and members of an ensemble train together this way;
K=1 is the ordinary single net. Optional dropout on inputs and hidden units (own masks per member and example) and a
max-norm constraint on each hidden unit's incoming weight vector give the dropout-paper recipe the teacher uses.
`member_module(k)` exports member k as a plain `nn.Sequential` for checks and for users.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from kdbench.engine import blas
from kdbench.registry import Registry, load_files

# a single member's layer as one `addmm` on 2-D tensors instead of a `baddbmm` over a batch of one (benchmarks/engine.py
# measures both and this is the faster on the CPU it was measured on)
SINGLE_MEMBER_MM = True
# which library multiplies the layers' matrices on the CPU: "torch" (its MKL), or "numpy" (numpy's OpenBLAS,
# kdbench.engine.blas), a candidate benchmarks/engine.py measures (issue 36); a GPU takes torch's path regardless.
# The rule is torch's path on every CPU, from benchmarks/engine.py's whole-step measurements on the three CPUs the suite
# has run on (AMD EPYC AVX2, AMD EPYC AVX-512, Intel Xeon AVX-512/AMX): through numpy the step is 0.13x-0.22x of
# torch's for one member (OpenBLAS's threads and torch's contend for the 2 cores), even where OpenBLAS's products alone
# are faster; oneDNN's fp32 products are in MKL's range on the Intel CPU (faster on some shapes, slower on others) and
# have no batched form for the members. No short measurement at a job's start: a path chosen by timing noise would make
# a run's numbers depend on it (docs/DEVIATIONS.md).
MATMUL = "torch"


def matmul_path(device: torch.device | str) -> str:
    """What multiplies the MLP's layers on `device`, as every run records it (`metrics.json`: `matmul`)."""
    if torch.device(device).type != "cpu":
        return f"torch ({torch.device(device).type})"
    if MATMUL == "numpy":
        return f"numpy ({blas.numpy_library()})"
    return f"torch ({blas.torch_library()})"


class MLP(nn.Module):
    def __init__(self, widths: list[int], members: int = 1, seeds: list[int] | None = None,
                 dropout_input: float = 0.0, dropout_hidden: float = 0.0, max_norm: float | None = None):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"widths needs input and output sizes, got {widths}")
        seeds = list(range(members)) if seeds is None else list(seeds)
        if len(seeds) != members:
            raise ValueError(f"{members} members need {members} seeds, got {seeds}")
        self.widths, self.members, self.seeds = list(widths), members, seeds
        self.dropout_input, self.dropout_hidden, self.max_norm = dropout_input, dropout_hidden, max_norm
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            self.weights.append(nn.Parameter(torch.empty(members, fan_in, fan_out)))
            self.biases.append(nn.Parameter(torch.empty(members, fan_out)))
        self.reset_parameters()
        # max-norm's bound bookkeeping (apply_max_norm): per hidden layer, (the weight's version, an upper bound (K,) on
        # each member's largest unit norm at that version); the optimizer reports each update's length on these
        self._norm_bounds: dict[int, tuple[int, torch.Tensor]] = {}
        if max_norm is not None:
            for w in list(self.weights)[:-1]:
                w.track_step = True

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Member k draws every layer from its own generator seeded with seeds[k] (nn.Linear's default law)."""
        for k, seed in enumerate(self.seeds):
            g = torch.Generator().manual_seed(seed)
            for w, b in zip(self.weights, self.biases):
                bound = 1.0 / math.sqrt(w.shape[1])
                w[k].copy_(torch.empty(w.shape[1:]).uniform_(-bound, bound, generator=g))
                b[k].copy_(torch.empty(b.shape[1:]).uniform_(-bound, bound, generator=g))

    def _dropout(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Each unit kept with probability 1 - p and scaled by 1 / (1 - p). The mask is drawn as `rand >= p` and
        applied as `x / (1 - p) * keep`: the values of `where(keep, x / (1 - p), 0)` bit for bit (times 1 or 0 is
        exact), forward and backward, at under half its time (issue 36: `where` and its backward were a sixth of the
        teacher's step)."""
        if not self.training or p == 0.0:
            return x
        keep = torch.rand_like(x) >= p
        return x.div(1.0 - p).mul_(keep)

    def forward(self, x: torch.Tensor, hidden: bool = False):
        """x: (K, B, D) per-member inputs, or (B, D) shared by all members. Returns logits (K, B, C), or with
        hidden=True (logits, the last hidden layer's ReLU activations (K, B, H) before dropout) for feature-based
        KD variants."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        numpy_path = MATMUL == "numpy" and blas.usable(x, self.weights[0])
        # one member: 2-D products on views (squeeze, whose backward is a view too: indexing [0] would make its
        # backward fill a zero tensor of the weight's size and copy the gradient in, every step)
        single = SINGLE_MEMBER_MM and self.members == 1 and not numpy_path
        if single:
            x = x.squeeze(0)
        x = self._dropout(x, self.dropout_input)
        last, h = len(self.weights) - 1, x
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if numpy_path:
                x = blas.numpy_baddbmm(b.unsqueeze(1), x, w)
            else:
                x = torch.addmm(b.squeeze(0), x, w.squeeze(0)) if single else torch.baddbmm(b.unsqueeze(1), x, w)
            if i < last:
                h = torch.relu(x)
                x = self._dropout(h, self.dropout_hidden)
        if single:
            x, h = x.unsqueeze(0), h.unsqueeze(0)
        return (x, h) if hidden else x

    @property
    def feature_dim(self) -> int:
        """Width of the features `forward(hidden=True)` returns."""
        return self.widths[-2]

    @torch.no_grad()
    def apply_max_norm(self) -> None:
        """Rescale each hidden unit's incoming weight vector to L2 norm <= max_norm (no-op when unset).

        The exact unit norms (a column-wise reduction, about a ninth of the teacher's step on a CPU) are computed only
        when a cheap bound cannot rule the constraint out (issue 36). A unit's norm after an update is at most its norm
        before plus the length of its member's whole update, which the optimizer reports (`kdbench.engine.optim`,
        `track_step`); while the bound, carried from the last exact check, stays under 0.999 * max_norm, no unit can be
        over it and the exact path would multiply by 1.0: nothing is done, and the weights are the same bits. Any other
        change to the weights (a load, a copy, the rescaling itself) moves their version counter past the one the
        bound holds, which sends the next call down the exact path."""
        if self.max_norm is None:
            return
        for layer, w in enumerate(list(self.weights)[:-1]):
            if self._bound_rules_out(layer, w):
                continue
            norms = w.norm(dim=1, keepdim=True)  # (K, 1, fan_out): one norm per unit of each member
            scale = torch.clamp(self.max_norm / (norms + 1e-12), max=1.0)
            if bool((scale < 1.0).any()):  # a pass over the weights only when a unit is over the bound (x 1.0 is exact)
                w.mul_(scale)
            largest = torch.clamp(norms, max=self.max_norm).amax(dim=(1, 2))  # (K,) after the rescaling
            self._norm_bounds[layer] = (w._version, largest * (1 + 1e-6))

    def _bound_rules_out(self, layer: int, w: torch.Tensor) -> bool:
        """Whether the bound proves every unit of layer `layer` inside max_norm after the optimizer's last update (the
        only change since the bound was set); updates the bound when it does."""
        held, moved = self._norm_bounds.get(layer), getattr(w, "last_step", None)
        if held is None or moved is None or moved[0] != w._version or held[0] != w._version - 1:
            return False
        # the update's length as computed, widened for its rounding and for the rounding of the update itself
        bound = (held[1] + moved[1] * (1 + 1e-4)) * (1 + 1e-6)
        if not bool((bound < 0.999 * self.max_norm).all()):
            return False
        self._norm_bounds[layer] = (w._version, bound)
        return True

    def member_module(self, k: int) -> nn.Sequential:
        """Member k as a plain nn.Sequential of Linear/ReLU (weights copied; dropout not included)."""
        layers: list[nn.Module] = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            lin = nn.Linear(w.shape[1], w.shape[2], device=w.device)
            with torch.no_grad():
                lin.weight.copy_(w[k].T)
                lin.bias.copy_(b[k])
            layers += [lin, nn.ReLU()] if i < len(self.weights) - 1 else [lin]
        return nn.Sequential(*layers)

    def config(self) -> dict:
        return dict(widths=self.widths, members=self.members, seeds=self.seeds, dropout_input=self.dropout_input,
                    dropout_hidden=self.dropout_hidden, max_norm=self.max_norm)

    @classmethod
    def build(cls, cfg: dict, seeds: list[int]) -> MLP:
        """The model of a resolved training config, one member per seed."""
        return cls(cfg["widths"], members=len(seeds), seeds=seeds, dropout_input=cfg["dropout_input"],
                   dropout_hidden=cfg["dropout_hidden"], max_norm=cfg["max_norm"])


# the model registry: a training config's `model` names the family whose `build(cfg, seeds)` makes its K members.
# A family is an nn.Module class with: `build(cfg, seeds)` (a classmethod), `forward(x, hidden=False)` on flat inputs
# (K, B, D) or (B, D) (reshape to `kdbench.data.registry.get(cfg["dataset"]).input_shape` inside if it needs to),
# `config()` (the keyword arguments that rebuild it), `members`, `widths` (widths[0] the input size, widths[-1] the
# classes), `feature_dim` and `apply_max_norm()`; every parameter is stacked by member, (K, ...). Its own settings
# (a CNN's channels and kernel, say) are its `PARAMS`, {name: default}: a config sets them under `model_params`,
# checked against the defaults' types, and `build` reads them from `cfg["model_params"]` (defaults filled in). A
# user's file registers one with `@register("name")`.
MODELS = Registry("model")


def family_params(name: str, given: dict) -> dict:
    """The model family's settings: its `PARAMS` defaults updated by `given`; ValueError naming an unknown key or a
    value of another type than its default's."""
    defaults = getattr(MODELS.get(name), "PARAMS", {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"model {name!r} has no setting(s) {unknown}; its settings are {sorted(defaults) or 'none'}. "
                         f"Fix: use only those")
    for key, value in given.items():
        if not _same_type(value, defaults[key]):
            raise ValueError(f"model {name!r}: {key} must be of the type of its default {defaults[key]!r}, got "
                             f"{value!r}. Fix: set {key} to such a value")
    return {**defaults, **given}


def _same_type(value, default) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return default is None or isinstance(value, type(default))


def register(name: str):
    def deco(cls):
        MODELS.add(name, cls)
        return cls
    return deco


register("mlp")(MLP)


def build(cfg: dict, seeds: list[int]) -> nn.Module:
    """The batched model of a resolved training config, one member per seed; a family whose parameters are not
    stacked by member (K, ...) is refused, since keeping each member's best epoch and picking members need that."""
    model = MODELS.get(cfg["model"]).build(cfg, seeds)
    for name, p in model.named_parameters():
        if p.dim() == 0 or p.shape[0] != len(seeds):
            raise ValueError(f"model family {cfg['model']!r}: parameter {name} is {tuple(p.shape)}, not stacked by "
                             f"member ({len(seeds)}, ...). Fix: hold every parameter of the K members as one tensor "
                             f"whose first dimension is the member (kdbench.engine.models, MODELS)")
    return model


def load(path, members: list[int] | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """A trained model.pt, all members or only the chosen ones (positions, in this order; state is member-major)."""
    return from_saved(torch.load(path, map_location="cpu", weights_only=False), members, device, where=path)


def from_saved(blob: dict, members: list[int] | None = None, device: torch.device | str = "cpu",
               where="the saved model") -> nn.Module:
    """The model of a loaded model.pt blob (see `load`)."""
    model_config, state = dict(blob["model_config"]), blob["state_dict"]
    if members is not None:
        idx = list(members)
        if idx and max(idx) >= model_config["members"]:
            raise ValueError(f"{where} has {model_config['members']} members, no member {max(idx)}")
        model_config.update(members=len(idx), seeds=[model_config["seeds"][i] for i in idx])
        state = {k: v[idx] for k, v in state.items()}
    name = blob.get("model", "mlp")
    if name not in MODELS:  # a user's family: the files its training config imported register it here too
        load_files(blob.get("train_config", {}).get("extensions", []))
    cls = MODELS.get(name)
    model = cls(**model_config)
    model.load_state_dict(state)
    return model.to(device)


@torch.no_grad()
def init_from_model(model: MLP, path, members: list[int], class_subset: list[int] | None) -> None:
    """Start member k from member members[k] of a trained model: hidden layers copied; the output layer copied, or
    for a specialist the subset's output units copied and the dustbin unit set to the mean of the others' weights
    with bias mean + log(count), so that it starts near the generalist's total probability of those classes."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(model, MLP) or blob.get("model", "mlp") != "mlp":
        raise ValueError(f"init_from copies an MLP's layers into an MLP; {path} holds a {blob.get('model', 'mlp')!r} "
                         f"and this job trains a {type(model).__name__}. Fix: start from an MLP, or drop init_from")
    src = blob["state_dict"]
    idx = torch.tensor(members)
    layers = len(model.weights)
    if blob["model_config"]["widths"][:-1] != model.widths[:-1]:
        raise ValueError(f"init_from {path}: widths {blob['model_config']['widths']} do not match {model.widths}")
    for i in range(layers):
        w, b = src[f"weights.{i}"][idx], src[f"biases.{i}"][idx]
        if i == layers - 1 and class_subset is not None:
            keep = torch.tensor(class_subset)
            rest = torch.tensor([c for c in range(w.shape[-1]) if c not in set(class_subset)])
            w = torch.cat([w[..., keep], w[..., rest].mean(-1, keepdim=True)], -1)
            b = torch.cat([b[..., keep], b[..., rest].mean(-1, keepdim=True) + math.log(len(rest))], -1)
        model.weights[i].copy_(w)
        model.biases[i].copy_(b)


def predict_split(model: MLP, split, idx: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Eval-mode logits (K, len(idx), C) of the examples idx of a split, inputs gathered chunk by chunk."""
    chunks = [predict_logits(model, split.inputs(idx[i:i + batch_size]), batch_size)
              for i in range(0, idx.shape[0], batch_size)]
    return torch.cat(chunks, dim=1) if chunks else torch.zeros(model.members, 0, model.widths[-1])


@torch.no_grad()
def predict_logits(model: MLP, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Eval-mode logits (K, N, C) of every member on flat inputs x (N, D), in chunks."""
    was = model.training
    model.eval()
    chunks = [model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    out = torch.cat(chunks, dim=1) if chunks else x.new_zeros(model.members, 0, model.widths[-1])
    model.train(was)
    return out
