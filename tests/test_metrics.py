"""training.metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from training.metrics import (
    compute_metrics,
    confusion_matrix,
    counts_task_metrics,
    format_metrics,
    scalar_metrics,
)

LABELS = [0, 0, 1, 1, 2, 3, 3, 3]
PREDS = [0, 1, 1, 1, 3, 3, 2, 0]
# errors (pred - true): 0, 1, 0, 0, 1, 0, -1, -3


def test_confusion_matrix_rows_are_true_classes() -> None:
    expected = [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1], [1, 0, 1, 1]]
    assert confusion_matrix(PREDS, LABELS, 4).tolist() == expected
    assert confusion_matrix(torch.tensor(PREDS), torch.tensor(LABELS), 4).tolist() == expected
    with pytest.raises(ValueError, match="within 0..3"):
        confusion_matrix([4], [0], 4)
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        confusion_matrix([0, 1], [0], 4)


def test_metrics_match_hand_computation() -> None:
    m = compute_metrics(PREDS, LABELS, class_values=[0, 1, 2, 3])
    assert m["n"] == 8
    assert m["accuracy"] == pytest.approx(4 / 8)
    assert m["rmse"] == pytest.approx(math.sqrt(12 / 8))
    assert m["mae"] == pytest.approx(6 / 8)
    assert m["off_by_one_accuracy"] == pytest.approx(7 / 8)
    # precision 1/2, 2/3, 0, 1/2; recall 1/2, 1, 0, 1/3; F1 1/2, 4/5, 0, 2/5
    assert m["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 0 + 1 / 2) / 4)
    assert m["macro_recall"] == pytest.approx((1 / 2 + 1 + 0 + 1 / 3) / 4)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 0 + 2 / 5) / 4)
    assert m["per_class_accuracy"] == pytest.approx({"0": 0.5, "1": 1.0, "2": 0.0, "3": 1 / 3})
    assert m["support"] == {"0": 2, "1": 2, "2": 1, "3": 3}
    assert m["confusion_matrix"][3] == [1, 0, 1, 1]


def test_absent_classes_and_overflow_values() -> None:
    # class "4+" (value 4) never occurs: excluded from the macro averages, per-class accuracy None
    names = ["0", "1", "2", "3", "4+"]
    m = compute_metrics(PREDS, LABELS, class_values=[0, 1, 2, 3, 4], class_names=names)
    assert m["per_class_accuracy"]["4+"] is None and m["support"]["4+"] == 0
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 0 + 2 / 5) / 4)
    # predicting the overflow class for a true 2 is an error of 2 count values
    o = compute_metrics([4, 2], [2, 2], class_values=[0, 1, 2, 3, 4], class_names=names)
    assert o["rmse"] == pytest.approx(math.sqrt(4 / 2)) and o["mae"] == pytest.approx(1.0)
    assert o["off_by_one_accuracy"] == pytest.approx(0.5)
    # a predicted-only class counts in the macro average with precision 0
    p = compute_metrics([1, 1], [0, 0], class_values=[0, 1, 2])
    assert p["macro_precision"] == 0.0 and p["macro_recall"] == 0.0 and p["accuracy"] == 0.0


def test_perfect_predictions_and_logits() -> None:
    logits = torch.tensor([[2.0, 0.1, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 0.5]])
    m = compute_metrics(logits.argmax(1), torch.tensor([0, 1, 2]), class_values=[0, 1, 2])
    assert (m["accuracy"], m["rmse"], m["mae"], m["macro_f1"], m["off_by_one_accuracy"]) == (1.0, 0.0, 0.0, 1.0, 1.0)


def test_bad_inputs_and_formatting() -> None:
    with pytest.raises(ValueError, match="no samples"):
        compute_metrics([], [], class_values=[0, 1])
    with pytest.raises(ValueError, match="argmax"):
        compute_metrics(torch.tensor([0.2]), [0], class_values=[0, 1])
    with pytest.raises(ValueError, match="class names"):
        compute_metrics([0], [0], class_values=[0, 1], class_names=["0"])
    m = compute_metrics(PREDS, LABELS, class_values=[0, 1, 2, 3])
    assert set(scalar_metrics(m, "test_")) == {
        "test_n",
        "test_accuracy",
        "test_rmse",
        "test_mae",
        "test_off_by_one_accuracy",
        "test_macro_precision",
        "test_macro_recall",
        "test_macro_f1",
    }
    lines = format_metrics(m, "val_").splitlines()
    assert "val_n: 8" in lines and "val_accuracy: 0.5000" in lines and "val_rmse: 1.2247" in lines


def test_counts_task_drops_overflow_bins_and_answers_among_counts() -> None:
    names, values = ["0", "1", "2+"], [0, 1, 2]
    probs = torch.tensor(
        [
            [0.5, 0.1, 0.4],  # true 0 -> 0
            [0.2, 0.3, 0.5],  # true 1: "2+" wins overall, 1 among the counts
            [0.6, 0.3, 0.1],  # true 1 -> 0
            [0.1, 0.2, 0.7],
        ]
    )  # true 2+: not part of the task
    labels = torch.tensor([0, 1, 1, 2])
    task = counts_task_metrics(probs, labels, values, names)
    assert task["n"] == 3 and task["class_names"] == ["0", "1"]
    assert task["accuracy"] == pytest.approx(2 / 3)
    assert task["confusion_matrix"] == [[1, 0], [1, 1]]
    assert counts_task_metrics(probs, labels, [0, 1, 2], ["0", "1", "2"]) is None  # no overflow class
    assert counts_task_metrics(probs[3:], labels[3:], values, names) is None  # only overflow bins
