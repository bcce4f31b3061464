"""The answer rule: per-class offsets on the log-probabilities, tuned for the served accuracy.

A classifier trained with label smoothing and an ordinal term under- or over-answers some counts
(the first default model answered ``6+`` for most bins holding 5). Adding an offset per class to
the log-probabilities before the argmax is the Bayes decision under a shifted class prior; the
offsets are chosen on the validation split to maximise the accuracy of the served answer, then
folded into the classifier's bias, so the artifact and the serving code do not change.
"""

from __future__ import annotations

import torch
from torch import nn


def accuracy_with_offsets(log_probs: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor) -> float:
    return float(((log_probs + offsets).argmax(1) == labels).float().mean())


def tune_offsets(
    log_probs: torch.Tensor, labels: torch.Tensor, span: float = 1.5, step: float = 0.05, rounds: int = 3
) -> torch.Tensor:
    """Coordinate ascent over one offset per class (the first class stays at 0: only differences matter).

    Ties keep the offset nearest 0, so a flat optimum does not drift.
    """
    num_classes = log_probs.shape[1]
    offsets = torch.zeros(num_classes)
    grid = torch.arange(-span, span + step / 2, step)
    grid = grid[grid.abs().argsort()]  # nearest 0 first: ties keep the smallest change
    best = accuracy_with_offsets(log_probs, labels, offsets)
    for _ in range(rounds):
        improved = False
        for c in range(1, num_classes):
            keep = offsets[c].item()
            for value in grid.tolist():
                offsets[c] = value
                acc = accuracy_with_offsets(log_probs, labels, offsets)
                if acc > best + 1e-12:
                    best, keep, improved = acc, value, True
            offsets[c] = keep
        if not improved:
            break
    return offsets


@torch.no_grad()
def fold_offsets(classifier: nn.Module, offsets: torch.Tensor) -> None:
    """softmax(Wx + b + offsets) is what the model then outputs: its argmax is the tuned rule.

    A CORN head (:class:`service.ordinal_head.CornHead`) answers log-probabilities, so the offsets go
    into its ``offsets`` buffer instead of a bias.
    """
    from service.ordinal_head import CornHead

    target = classifier.offsets if isinstance(classifier, CornHead) else classifier.bias
    target.add_(offsets.to(target.dtype))


def output_layer(model: nn.Module, num_classes: int) -> nn.Module:
    """The layer :func:`fold_offsets` changes: the model's CORN head, else its last ``nn.Linear`` with
    ``num_classes`` outputs (every registered architecture ends in one)."""
    from service.ordinal_head import CornHead

    heads = [m for m in model.modules() if isinstance(m, CornHead)]
    if heads:
        return heads[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1].out_features != num_classes or linears[-1].bias is None:
        raise ValueError(f"{type(model).__name__} does not end in a linear layer of {num_classes} outputs with a bias")
    return linears[-1]


def answer_rule(
    probs: torch.Tensor, labels: torch.Tensor, class_values, names, tune: bool
) -> tuple[dict, torch.Tensor | None, dict | None]:
    """The figures of the argmax, the answer rule's offsets tuned on ``labels`` and the figures under them
    (``None`` twice without ``tune``)."""
    from training.metrics import compute_metrics

    before = compute_metrics(probs.argmax(1), labels, class_values, names)
    if not tune:
        return before, None, None
    log_probs = probs.clamp_min(1e-8).log()
    offsets = tune_offsets(log_probs, labels)
    return before, offsets, compute_metrics((log_probs + offsets).argmax(1), labels, class_values, names)
