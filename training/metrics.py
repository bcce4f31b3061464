"""Counting metrics from predicted and true classes (pure torch/python).

Accuracy is on classes; RMSE, MAE and off-by-one accuracy are on count values (``class_values``:
an overflow class "6+" counts as 6, a lower bound), as in the ABID counting challenge, which
scored the argmax class. Macro precision/recall/F1 average over the classes that occur in the
labels or the predictions (as sklearn does); a class never predicted has precision 0.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

SCALAR_KEYS = ("n", "accuracy", "rmse", "mae", "off_by_one_accuracy", "macro_precision", "macro_recall", "macro_f1")


def _as_long(values: torch.Tensor | Sequence[int], name: str) -> torch.Tensor:
    tensor = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.tensor(list(values))
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be one class index per sample (1-d), got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point() and tensor.numel():
        raise ValueError(f"{name} must be class indices (integers); use logits.argmax(1) for logits")
    return tensor.long()


def confusion_matrix(
    predictions: torch.Tensor | Sequence[int], labels: torch.Tensor | Sequence[int], num_classes: int
) -> torch.Tensor:
    """``[num_classes, num_classes]`` counts: row = true class, column = predicted class."""
    predictions, labels = _as_long(predictions, "predictions"), _as_long(labels, "labels")
    if predictions.shape != labels.shape:
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    for name, t in (("predictions", predictions), ("labels", labels)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} must be within 0..{num_classes - 1}")
    flat = labels * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def compute_metrics(
    predictions: torch.Tensor | Sequence[int],
    labels: torch.Tensor | Sequence[int],
    class_values: Sequence[float],
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All metrics as a JSON-ready dict (floats, lists, dicts keyed by class name).

    ``class_values[i]`` is the count of class ``i``; ``class_names`` default to those values.
    Per-class accuracy (= recall) is ``None`` for a class with no samples.
    """
    num_classes = len(class_values)
    names = list(class_names) if class_names is not None else [f"{v:g}" for v in class_values]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    predictions, labels = _as_long(predictions, "predictions"), _as_long(labels, "labels")
    matrix = confusion_matrix(predictions, labels, num_classes)
    n = int(labels.numel())
    if n == 0:
        raise ValueError("no samples to compute metrics on")
    values = torch.tensor([float(v) for v in class_values], dtype=torch.float64)
    error = values[predictions] - values[labels]
    correct = int(matrix.diag().sum())

    support = matrix.sum(1).tolist()  # true samples per class
    predicted = matrix.sum(0).tolist()  # predictions per class
    diag = matrix.diag().tolist()
    precision = [_ratio(diag[c], predicted[c]) for c in range(num_classes)]
    recall = [_ratio(diag[c], support[c]) for c in range(num_classes)]
    f1 = [_ratio(2 * p * r, p + r) for p, r in zip(precision, recall)]
    active = [c for c in range(num_classes) if support[c] or predicted[c]]

    return {
        "n": n,
        "accuracy": correct / n,
        "rmse": math.sqrt(float((error**2).mean())),
        "mae": float(error.abs().mean()),
        "off_by_one_accuracy": float((error.abs() <= 1).double().mean()),
        "macro_precision": sum(precision[c] for c in active) / len(active),
        "macro_recall": sum(recall[c] for c in active) / len(active),
        "macro_f1": sum(f1[c] for c in active) / len(active),
        "per_class_accuracy": {names[c]: (recall[c] if support[c] else None) for c in range(num_classes)},
        "per_class_precision": {names[c]: precision[c] for c in range(num_classes)},
        "per_class_f1": {names[c]: f1[c] for c in range(num_classes)},
        "support": {names[c]: int(support[c]) for c in range(num_classes)},
        "class_names": names,
        "confusion_matrix": matrix.tolist(),
    }


def counts_task_metrics(
    probs: torch.Tensor, labels: torch.Tensor | Sequence[int], class_values: Sequence[float], class_names: Sequence[str]
) -> dict[str, Any] | None:
    """The ABID challenge's task for a model with an overflow class ("6+"): only the bins holding
    0..N, each answered with the most probable of the classes 0..N. ``None`` without an overflow class
    (then the ordinary metrics are that task already)."""
    if not class_names or not class_names[-1].endswith("+"):
        return None
    n_counts = len(class_names) - 1
    labels = _as_long(labels, "labels")
    in_range = labels < n_counts
    if not bool(in_range.any()):
        return None
    return compute_metrics(
        probs[in_range][:, :n_counts].argmax(1), labels[in_range], class_values[:n_counts], class_names[:n_counts]
    )


def scalar_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The headline numbers of a metrics dict, keys optionally prefixed (``val_accuracy``)."""
    return {f"{prefix}{k}": metrics[k] for k in SCALAR_KEYS if k in metrics}


def format_metrics(metrics: dict[str, Any], prefix: str = "") -> str:
    """One ``key: value`` line per headline metric (what SageMaker metric regexes read)."""
    lines = []
    for key, value in scalar_metrics(metrics, prefix).items():
        lines.append(f"{key}: {value}" if isinstance(value, int) else f"{key}: {value:.4f}")
    return "\n".join(lines)
