"""The figures a user gets: what ``/invocations`` answers (argmax over every class, ``6+`` included).

Three views of one set of predictions, each with its ``n``:

* ``all``: every bin, the served answer, ``6+`` a class of its own;
* ``bins_0_N``: only the bins holding 0..N items, still the served answer (a bin of 5 answered
  ``6+`` is wrong here);
* ``counts_task``: the ABID challenge's protocol, for comparison: bins 0..N, the answer restricted
  to 0..N (what the service never answers).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch

from training.metrics import compute_metrics, counts_task_metrics


def served_metrics(
    probs: torch.Tensor, labels: torch.Tensor, class_values: Sequence[float], class_names: Sequence[str]
) -> dict[str, Any]:
    predicted = probs.argmax(1)
    result: dict[str, Any] = {"all": compute_metrics(predicted, labels, class_values, class_names)}
    if class_names[-1].endswith("+"):
        in_range = labels < len(class_names) - 1
        if bool(in_range.any()):
            result[f"bins_0_{len(class_names) - 2}"] = compute_metrics(
                predicted[in_range], labels[in_range], class_values, class_names
            )
        result["counts_task"] = counts_task_metrics(probs, labels, class_values, class_names)
    return result


def subset(
    probs: torch.Tensor, labels: torch.Tensor, ids: Sequence[str], keep: Collection[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [i for i, bin_id in enumerate(ids) if bin_id in keep]
    return probs[rows], labels[rows]


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """One flat dict of the numbers a log line or a table needs."""
    out = {"all_acc": metrics["all"]["accuracy"], "all_rmse": metrics["all"]["rmse"], "all_n": metrics["all"]["n"]}
    for key, value in metrics.items():
        if key.startswith("bins_0_"):
            out.update({f"{key}_acc": value["accuracy"], f"{key}_n": value["n"]})
    if metrics.get("counts_task"):
        task = metrics["counts_task"]
        out.update(counts_task_acc=task["accuracy"], counts_task_rmse=task["rmse"], counts_task_n=task["n"])
    return out
