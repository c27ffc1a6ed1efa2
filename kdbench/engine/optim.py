"""SGD with (Nesterov) momentum and a per-step learning-rate schedule, without torch.optim.

What this file achieves: `SGD` applies exactly torch.optim.SGD's update (weight decay added to the gradient, the
momentum buffer started from the first gradient, Nesterov's look-ahead, the same tensor operations in the same order,
so the numbers are bit-identical) and sets its learning rate for every step from `kdbench.engine.train`'s schedule.
A parameter marked `track_step = True` gets `p.last_step = (p._version, L)` after each update, L (K,) the L2
length of each member's update of it (the MLP's max-norm check bounds its units' norms with it).
`FUSED = True` makes the update in one pass over the weights with torch's fused SGD kernel (`torch._fused_sgd_`),
a candidate benchmarks/engine.py measures: the same arithmetic, but not always the same bits (one unit in the last
place, now and then, on the CPU it was tried on), so it is off unless its speed is worth that.
Why not torch.optim: constructing any torch.optim optimizer imports torch._dynamo, 1.7 s of every job on a CPU, about
half the wall time of a small workflow job; a job of the smoke profile trains for about a second.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

# torch's fused kernel for the whole update (see above; benchmarks/engine.py measures the step with and without it)
FUSED = False


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
        try:
            torch._fused_sgd_(self.params, [p.grad for p in self.params], buffers, weight_decay=self.weight_decay,
                              momentum=self.momentum, lr=lr, dampening=0.0, nesterov=self.nesterov, maximize=False,
                              is_first_step=first)
        except (AttributeError, NotImplementedError, RuntimeError):  # no fused kernel here (torch, device, dtype)
            return False
        self.buffers = buffers
        return True

    def state_dict(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "buffers": list(self.buffers)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.buffers = [None if b is None else b.to(p.device) for b, p in zip(state["buffers"], self.params)]
