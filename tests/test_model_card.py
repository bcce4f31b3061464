"""The model card states the artifact's own numbers."""

from service.artifact import metadata_for
from training.metrics import compute_metrics
from training.model_card import render_model_card


def test_card_holds_the_metrics_per_class_and_provenance() -> None:
    labels = ["0", "1", "2", "3+"]
    meta = metadata_for("efficientnet_lite0", labels, input_size=160, resize="squash", dropout=0.2)
    meta.data = {"dataset": "synthetic bins", "licence": "CC0", "bins": 12,
                 "split": {"train": 4, "val": 2, "test": 6}, "split_seed": 7}
    meta.training = {"epochs": 3, "lr": 0.001}
    test = compute_metrics([0, 1, 1, 3, 2, 0], [0, 1, 2, 3, 2, 1], [0, 1, 2, 3], labels)
    counts = compute_metrics([0, 1, 1], [0, 1, 2], [0, 1, 2], labels[:3])
    history = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.75}, {"epoch": 3, "val_acc": 0.6}]
    card = render_model_card(meta, test, counts, 2, "python -m training.default_model --data-dir d", history)

    assert "| counts 0-2 (ABID challenge task) | 3 | 66.7% |" in card
    assert "| all held-out bins, 3+ as one class | 6 | 66.7% |" in card
    assert "| 2 | 2 | 50.0% |" in card          # per class: two bins of count 2, one right
    assert "always answering the commonest count scores 33.3% on these test bins" in card
    assert "| **2** | 0 | 1 | 0 |" in card        # counts 0-2 confusion row of the true count 2: predicted 1
    assert "epoch 2, the best validation accuracy (75.0%)" in card
    assert "python -m training.default_model --data-dir d" in card
    assert "| epochs | `3` |" in card and "train 4 / validation 2 / test 6" in card and "CC0" in card
