"""The paper's bias correction for transfer sets that lack classes, chosen on the validation split.

A student that never saw a class learns too low a bias for it (section 3). The fix shifts the output bias of the
chosen classes by one amount: up for an omitted class (the paper: +3.5 for the 3s), down for the only classes seen
(the paper: -7.6 for the 7s and 8s). The paper tuned the shift on the test set; here it is chosen on the validation
split (the smallest shift that reaches the fewest validation errors), and the paper's value is reported beside it.
"""
from __future__ import annotations

import torch

from kdbench.engine.evaluate import error_summary


def shift_vector(num_classes: int, classes: list[int], shift: float) -> torch.Tensor:
    b = torch.zeros(num_classes)
    b[classes] = shift
    return b


def choose_shift(val_logits: torch.Tensor, val_labels: torch.Tensor, classes: list[int],
                 grid: list[float]) -> list[float]:
    """For each member of val_logits (K, N, C), the shift in `grid` with the fewest validation errors (ties go to
    the shift of smallest magnitude)."""
    c = val_logits.shape[-1]
    order = sorted(grid, key=abs)
    errors = torch.stack([torch.tensor([r["errors"] for r in
                                        error_summary(val_logits, val_labels, bias=shift_vector(c, classes, s))])
                          for s in order])  # (shifts, K)
    return [order[i] for i in errors.argmin(0).tolist()]  # argmin returns the first minimum: smallest |shift|


def correct(logits_blob: dict, classes: list[int], grid: list[float], paper_shift: float) -> list[dict]:
    """Per member: test results with no shift, with the validation-chosen shift, and with the paper's shift."""
    val, test = logits_blob["val"].float(), logits_blob["test"].float()
    yv, yt = logits_blob["val_labels"], logits_blob["test_labels"]
    c = test.shape[-1]
    chosen = choose_shift(val, yv, classes, grid)
    raw = error_summary(test, yt)
    paper = error_summary(test, yt, bias=shift_vector(c, classes, paper_shift))
    out = []
    for k, seed in enumerate(logits_blob["seeds"]):
        val_choice = error_summary(test[k], yt, bias=shift_vector(c, classes, chosen[k]))[0]
        out.append({"seed": seed, "classes": classes, "val_shift": chosen[k], "paper_shift": paper_shift,
                    "raw": raw[k], "val_chosen": val_choice, "paper": paper[k]})
    return out
