"""SGD with (Nesterov) momentum and a per-step learning-rate schedule, without torch.optim.

What this file achieves: `SGD` applies exactly torch.optim.SGD's update (weight decay added to the gradient, the
momentum buffer started from the first gradient, Nesterov's look-ahead, the same tensor operations in the same order,
so the numbers are bit-identical) and sets its learning rate for every step from `kdbench.engine.train`'s schedule.
A parameter marked `track_step = True` gets `p.last_step = (p._version, L)` after each update, L (K,) the L2
length of each member's update of it (the MLP's max-norm check bounds its units' norms with it).
`FUSED` (on) makes the update in one pass over the weights with torch's fused SGD kernel (`torch._fused_sgd_`, the
kernel of torch.optim.SGD(fused=True), bit for bit: a test) wherever it exists, else tensor by tensor. The same
arithmetic, but not always the same bits as the loop (one unit in the last place now and then), so a run's record says
which made its steps (`kernel`, metrics.json's `optimizer`). It is on because it is faster (benchmarks/engine.py:
1.09x on the T=20 student's step, 1.02x on the teacher's, 1.11x and 1.10x with five members batched, on the Intel Xeon
of results/bench/engine.csv) and because the paper teacher and the T=20 student trained with it on 3 seeds end within
the loop's seed spread (docs/DEVIATIONS.md, "Optimizer kernel"). A fused step reports its update lengths too, as
bounds: with Nesterov and no weight decay the update is lr (g + momentum b), b the new buffer, and its length at most
lr (|g| + momentum |b|); without Nesterov it is lr b. With Nesterov and weight decay it reports none, and max-norm
checks its norms exactly.
Why not torch.optim: constructing any torch.optim optimizer imports torch._dynamo, 1.7 s of every job on a CPU, about
half the wall time of a small workflow job; a job of the smoke profile trains for about a second.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

# torch's fused kernel for the whole update (see above; benchmarks/engine.py measures the step with and without it)
FUSED = True
FUSED_NAME, LOOP_NAME = "fused (torch._fused_sgd_)", "loop (tensor by tensor)"


def member_sq_norms(t: torch.Tensor) -> torch.Tensor:
    """(K,) squared L2 norms of each member's slice t[k], as one contiguous dot product each (a quarter of the time of
    a `vector_norm` over dim 1 on the CPU)."""
    flat = t.reshape(t.shape[0], -1)
    return torch.stack([torch.dot(row, row) for row in flat])


class SGD:
    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 schedule: Callable[[int], float] = lambda step: 1.0):
        self.params = list(params)
        self.base_lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self.schedule = schedule
        self.steps = 0
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)
        self.fused_steps = 0  # how many of `steps` the fused kernel made (the rest: the loop)

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.base_lr * self.schedule(self.steps)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """torch.optim.SGD's update: fused when every weight has a gradient, else tensor by tensor, with Nesterov's
        look-ahead added into the gradient in place (the gradient is spent: `zero_grad` drops it before the next
        backward) rather than into a new tensor the size of the weights."""
        if self.momentum != 0 and FUSED and self._fused(self.lr):
            self.steps += 1
            self.fused_steps += 1
            return
        lr = self.lr
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1.0)
                grad = grad.add_(buf, alpha=self.momentum) if self.nesterov else buf
            p.add_(grad, alpha=-lr)
            if getattr(p, "track_step", False):  # the update's length per member, for max-norm's bound (models.MLP)
                p.last_step = (p._version, lr * member_sq_norms(grad).sqrt())
        self.steps += 1

    def _fused(self, lr: float) -> bool:
        """One fused kernel call for every weight; False (nothing done) where it does not apply."""
        first = all(b is None for b in self.buffers)
        if any(p.grad is None for p in self.params) or (not first and any(b is None for b in self.buffers)):
            return False
        buffers = [torch.empty_like(p) for p in self.params] if first else self.buffers
        tracked = [i for i, p in enumerate(self.params) if getattr(p, "track_step", False)]
        bounded = not (self.nesterov and self.weight_decay != 0)
        grad_sq = {i: member_sq_norms(self.params[i].grad) for i in tracked} if bounded and self.nesterov else {}
        try:
            torch._fused_sgd_(self.params, [p.grad for p in self.params], buffers, weight_decay=self.weight_decay,
                              momentum=self.momentum, lr=lr, dampening=0.0, nesterov=self.nesterov, maximize=False,
                              is_first_step=first)
        except (AttributeError, NotImplementedError, RuntimeError):  # no fused kernel here (torch, device, dtype)
            return False
        self.buffers = buffers
        for p in self.params:  # the kernel writes the weights without moving their version counters, which
            torch.autograd.graph.increment_version(p)  # autograd and max-norm's bound (models.MLP) read
        for i in tracked if bounded else ():  # the update's length per member, bounded (see the module)
            p, buf_len = self.params[i], member_sq_norms(buffers[i]).sqrt()
            length = grad_sq[i].sqrt() + self.momentum * buf_len if self.nesterov else buf_len
            p.last_step = (p._version, lr * length)
        return True

    @property
    def kernel(self) -> str:
        """What made the steps so far, as a run's record says it: the fused kernel, the loop, or both with the count
        (a step whose weights lack a gradient, or a checkpoint made before `FUSED`, takes the loop)."""
        if self.fused_steps == self.steps:
            return FUSED_NAME if self.steps else "none"
        if self.fused_steps == 0:
            return LOOP_NAME
        return f"{FUSED_NAME} for {self.fused_steps} of {self.steps} steps, the rest {LOOP_NAME}"

    def state_dict(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "buffers": list(self.buffers), "fused_steps": self.fused_steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.fused_steps = state.get("fused_steps", 0)  # a checkpoint from before the count: its steps were the loop's
        self.buffers = [None if b is None else b.to(p.device) for b, p in zip(state["buffers"], self.params)]
