"""The MLP's matrix products through numpy's BLAS: a candidate path for the CPU (issue 36), not yet the default.

What this file achieves: `numpy_baddbmm(bias, x, w)` returns what `torch.baddbmm(bias, x, w)` does for fp32 CPU
tensors x (K, B, I), w (K, I, O) and bias (K, 1, O), but computes the product with `numpy.matmul` on arrays that share
the tensors' memory (numpy's wheels carry OpenBLAS; torch's CPU wheels use MKL, which on AMD CPUs may not take its
fastest kernels). Its backward computes the two gradient products (g w^T and x^T g) the same way and the bias's
gradient as torch does. `kdbench.engine.models.MATMUL = "numpy"` routes the MLP's layers through it (a switch for
`benchmarks/engine.py`, which times both paths per shape and per training step; "torch" stays the default until a
measurement on a quiet machine says otherwise). Where numpy or the tensors do not fit (a GPU, another dtype), the
caller keeps torch's path.
"""
from __future__ import annotations

import re

import numpy as np
import torch


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the numpy path applies: every tensor fp32 on the CPU."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b over the leading batch dim, by numpy's BLAS, on views of the tensors' memory."""
    return torch.from_numpy(np.matmul(a.detach().numpy(), b.detach().numpy()))


class _NumpyBaddbmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, bias, x, w):
        ctx.save_for_backward(x, w)
        out = _mm(x, w)
        out += bias
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad = grad.contiguous()
        gb = grad.sum(-2, keepdim=True) if ctx.needs_input_grad[0] else None
        gx = _mm(grad, w.transpose(-1, -2)) if ctx.needs_input_grad[1] else None
        gw = _mm(x.transpose(-1, -2), grad) if ctx.needs_input_grad[2] else None
        return gb, gx, gw


def numpy_baddbmm(bias: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """bias (K, 1, O) + x (K, B, I) @ w (K, I, O), by numpy's BLAS, with autograd."""
    return _NumpyBaddbmm.apply(bias, x, w)


def numpy_library() -> str:
    """numpy's BLAS as its build names it, e.g. "scipy-openblas 0.3.31.188.0"."""
    try:
        c = np.__config__.CONFIG["Build Dependencies"]["blas"]
        return f"{c.get('name', 'unknown')} {c.get('version', '')}".strip()
    except (AttributeError, KeyError, TypeError):
        return "unknown"


def torch_library() -> str:
    """torch's CPU BLAS as its build settings name it (e.g. "mkl")."""
    m = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return m.group(1) if m else "unknown"
