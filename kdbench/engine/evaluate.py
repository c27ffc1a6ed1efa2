"""Error counts from logits: total errors, accuracy and errors per true class, for every member at once."""
from __future__ import annotations

import torch


def error_summary(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None,
                  bias: torch.Tensor | None = None) -> list[dict]:
    """logits (K, N, C) or (N, C), labels (N,): one dict per member with errors, accuracy, per_class_errors and
    per_class_counts. `bias` (C,) is added to the logits first (the paper's bias correction)."""
    if logits.dim() == 2:
        logits = logits.unsqueeze(0)
    if bias is not None:
        logits = logits + bias
    c = num_classes or logits.shape[-1]
    wrong = logits.argmax(-1) != labels  # (K, N)
    per_class = torch.zeros(logits.shape[0], c, dtype=torch.long, device=logits.device)
    per_class.scatter_add_(1, labels.expand_as(wrong), wrong.long())
    counts = torch.bincount(labels, minlength=c).tolist()
    n = labels.shape[0]
    return [{"errors": int(w.sum()), "accuracy": 1.0 - float(w.sum()) / n, "n": n,
             "per_class_errors": pc.tolist(), "per_class_counts": counts}
            for w, pc in zip(wrong, per_class)]
