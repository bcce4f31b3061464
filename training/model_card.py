"""A model card (``README.md`` in the artifact folder) from an artifact's metadata.

The card is written from the numbers in ``model.json`` (and ``learning_curve.json`` when the
learning-curve command wrote one), so the two cannot disagree. It leads with what a user of the
service gets: the accuracy of the answer ``/invocations`` returns, on every held-out bin and on the
bins holding 0..N; the ABID challenge's restricted protocol follows, for comparison with published
results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from service.artifact import METADATA_FILE, ModelMetadata, read_metadata
from service.files import atomic_write
from training.intervals import accuracy_interval

CARD_FILE = "README.md"
LEARNING_CURVE_FILE = "learning_curve.json"


def _views_sentence(views: list[str]) -> str:
    """How the model answers when it averages views (nothing when it answers from the photo alone)."""
    if views == ["orig"]:
        return ""
    return (
        f"; the answer averages the class probabilities over {len(views)} views of the photo "
        f"({', '.join(views)}: {len(views)} forward passes; `BINSIGHT_TEST_TIME_VIEWS=orig` serves one)"
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def majority_accuracy(metrics: dict[str, Any]) -> float:
    """Accuracy of always answering the commonest true class of these bins (the floor to beat)."""
    return max(metrics["support"].values()) / metrics["n"]


def _interval(metrics: dict[str, Any]) -> str:
    low, high = accuracy_interval(metrics["accuracy"], metrics["n"])
    return f"{100 * low:.1f}-{100 * high:.1f}%"


def _headline_table(sections: Sequence[tuple[str, dict[str, Any] | None]]) -> list[str]:
    rows = [
        "| held-out test bins | n | accuracy | 95% interval | RMSE | MAE | off-by-one | commonest count |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for title, m in sections:
        if m:
            rows.append(
                f"| {title} | {m['n']} | **{_pct(m['accuracy'])}** | {_interval(m)} | {m['rmse']:.3f} "
                f"| {m['mae']:.3f} | {_pct(m['off_by_one_accuracy'])} | {_pct(majority_accuracy(m))} |"
            )
    return rows


def _per_class_table(metrics: dict[str, Any], restricted: dict[str, Any] | None) -> list[str]:
    names = metrics["class_names"]
    head = "| true count | bins | served answer right | precision |" + (
        " challenge protocol right |" if restricted else ""
    )
    rows = [head, "|---|---:|---:|---:|" + ("---:|" if restricted else "")]
    for name in names:
        if not metrics["support"].get(name):
            continue
        row = (
            f"| {name} | {metrics['support'][name]} | {_pct(metrics['per_class_accuracy'][name])} "
            f"| {_pct(metrics['per_class_precision'][name])} |"
        )
        if restricted:
            row += f" {_pct(restricted['per_class_accuracy'].get(name))} |" if name in restricted["support"] else " - |"
        rows.append(row)
    return rows


def _confusion_table(metrics: dict[str, Any]) -> list[str]:
    names = metrics["class_names"]
    rows = ["| true \\ answered | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, row in zip(names, metrics["confusion_matrix"]):
        rows.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    return rows


def _manual_check_section(check: dict[str, Any] | None) -> list[str]:
    if not check:
        return []
    t, rates = check["thresholds"], check["test"]
    return [
        "## Verification: does the bin hold what the inventory says?",
        "",
        "`POST /predict` with `expected_quantity` flags a photo for a person when the answer's confidence is below "
        f"{t['min_confidence']:.2f} or the probability of the expected quantity is below "
        f"{t['min_expected_probability']:.2f}: this model's thresholds, chosen on the validation split "
        f"({t['criterion']}), recorded in `model.json` and used by `serve` unless `BINSIGHT_MANUAL_CHECK_CONFIDENCE` "
        "/ `BINSIGHT_MANUAL_CHECK_EXPECTED_PROBABILITY` say otherwise. "
        "On the held-out test bins, asking with the right quantity and with wrong ones:",
        "",
        "| expected quantity given | questions | flagged for a person |",
        "|---|---:|---:|",
        *[f"| {case.replace('_', ' ')} | {r['n']} | {_pct(r['flag_rate'])} |" for case, r in rates.items()],
        "",
        *_serving_defaults_lines(check),
        "Bins holding more than the last count are one class (`6+`), so a wrong quantity above it is not caught.",
        "The curve below moves the probability threshold (the confidence threshold fixed):",
        "",
        "![Flag rates on held-out test bins](manual_check.png)",
        "",
    ]


def _serving_defaults_lines(check: dict[str, Any]) -> list[str]:
    at, d = check.get("test_at_serving_defaults"), check.get("serving_defaults")
    if not at or not d:
        return []
    rates = ", ".join(f"{case.replace('_', ' ')} {_pct(r['flag_rate'])}" for case, r in at.items())
    return [
        f"With fixed thresholds instead (confidence {d['min_confidence']:.2f}, probability of the expected quantity "
        f"{d['min_expected_probability']:.2f}: `serve`'s fallback for a model that records none) the flag fires for: "
        f"{rates}.",
        "",
    ]


def recipe_differences(curve_recipe: dict[str, Any], training: dict[str, Any]) -> list[str]:
    """Settings in which the curve's runs differ from the recipe that made this model (final fit aside).

    An option the curve does not record (it predates the option) had its default there.
    """
    from training.recipes.default_model import RecipeConfig

    skip = {"final_fit", "test_time_views"}
    fields = RecipeConfig.model_fields
    defaults = {k: f.default for k, f in fields.items() if not f.is_required()}
    recorded = _seeded(
        {
            key: curve_recipe[key] if key in curve_recipe else _jsonable(defaults[key])
            for key in training.keys() & (curve_recipe.keys() | defaults.keys())
        }
    )
    training = _seeded(training)
    return [
        f"{key} {recorded[key]} (this model: {training[key]})"
        for key in sorted(recorded.keys() - skip)
        if recorded[key] != training[key]
    ]


def _seeded(settings: dict[str, Any]) -> dict[str, Any]:
    """A training seed left unset is the split's seed: the same run as one that names it."""
    if "train_seed" in settings and settings["train_seed"] is None and "seed" in settings:
        return {**settings, "train_seed": settings["seed"]}
    return settings


def _jsonable(value: Any) -> Any:
    """A default as model.json records it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _learning_curve_section(model_dir: Path, metadata: ModelMetadata) -> list[str]:
    path = model_dir / LEARNING_CURVE_FILE
    if not path.is_file():
        return []
    curve = json.loads(path.read_text())
    differences = recipe_differences(curve.get("recipe", {}), metadata.training)
    recipe = "This model's recipe" if not differences else "A different recipe (" + "; ".join(differences) + ")"
    lines = [
        "## Learning curve",
        "",
        f"{recipe} on a seeded share of the training bins (validation and test parts unchanged); test "
        "figures of the served answer. " + curve.get("note", ""),
        "",
        "| training bins | all bins | bins 0-5 | challenge protocol (0-5) |",
        "|---:|---:|---:|---:|",
    ]
    for row in curve["points"]:
        lines.append(
            f"| {row['train_bins']} | {_pct(row['all_acc'])} | {_pct(row.get('bins_0_5_acc'))} "
            f"| {_pct(row.get('counts_task_acc'))} |"
        )
    lines += ["", "![Learning curve](learning_curve.png)", ""]
    if curve.get("extrapolation"):
        lines += [curve["extrapolation"], ""]
    return lines


def _int8_section(metadata: ModelMetadata) -> list[str]:
    """What the int8 graph beside the model (``python -m training.quantize``) costs in accuracy, when there is one."""
    record = ((metadata.model_extra or {}).get("quantization") or {}).get("int8")
    if not record:
        return []
    ev, calibration = record["evaluation"], record["calibration"]
    task = ev.get("counts_0_5_accuracy_change_points")
    return [
        "## int8 graph",
        "",
        f"`{record['file']}` (static QDQ, {calibration['method']} calibration on {calibration['images']} training "
        f"photos) serves with `BINSIGHT_PRECISION=int8`. On the {ev['n']} test bins through the serving "
        f"preprocessing: {_pct(ev['fp32']['accuracy'])} fp32 vs {_pct(ev['int8']['accuracy'])} int8 on all bins "
        f"({ev['accuracy_change_points']:+.2f} points)"
        + (f", {task:+.2f} points on the challenge protocol" if task is not None else "")
        + f"; the two graphs give the same answer on {_pct(ev['same_prediction_share'])} of the bins.",
        "",
    ]


def refresh_model_card(model_dir: Path, data_dir: Path | str) -> Path | None:
    """Re-render the recipe's card beside a model after something else rewrote its files (the learning curve,
    an int8 graph); the card is rendered from ``model.json`` and ``learning_curve.json`` only. A folder without a
    card (a model from ``python -m training``, which writes none) is left as it is."""
    model_dir = Path(model_dir)
    if not (model_dir / METADATA_FILE).is_file() or not (model_dir / CARD_FILE).is_file():
        return None
    from training.recipes.default_model import RecipeConfig, recipe_command  # it imports this module

    metadata = read_metadata(model_dir)
    settings = {k: v for k, v in metadata.training.items() if k in RecipeConfig.model_fields}
    return write_model_card(model_dir, metadata, recipe_command(RecipeConfig(data_dir=data_dir, **settings)))


def _answer_section(metadata: ModelMetadata) -> list[str]:
    """The served answer's figures on the held-out test split: headline, per class, confusion, manual check."""
    metrics, data = metadata.metrics, metadata.data
    test = metrics["test"]
    overflow = metadata.labels[-1] if metadata.labels[-1].endswith("+") else None
    range_key = next((k for k in metrics if k.startswith("test_bins_0_")), None)
    in_range, task = metrics.get(range_key) if range_key else None, metrics.get("test_counts_task")
    top = range_key[len("test_bins_0_") :] if range_key else None
    full = metrics.get("test_full_size_photos", {})
    lines = [
        f"# binsight default model: {metadata.architecture}, counts {', '.join(metadata.labels)}",
        "",
        "Counts the items in a warehouse bin photo. Classes are counts"
        + (f"; `{overflow}` means that many or more" if overflow else "")
        + f". Input: the photo squashed to {metadata.input_size}x{metadata.input_size} (resize policy "
        f"`{metadata.resize}`)" + _views_sentence(metadata.test_time_views) + ".",
        "",
        "## What the service answers (held-out test)",
        "",
        f"Measured on {test['n']} bins that no training step or model selection saw (a stratified split, seed "
        f"{data.get('split_seed')}), from the JPEG bytes through the serving code"
        f"{' with its test-time views' if metadata.test_time_views != ['orig'] else ''}: "
        "exactly the answer `POST /invocations` returns"
        + (f", `{overflow}` being an answer like any other" if overflow else "")
        + ".",
        "",
        *_headline_table(
            [
                ("all bins (served answer)", test),
                (f"bins holding 0-{top} (served answer)", in_range),
                (f"bins holding 0-{top}, answer restricted to 0-{top} (ABID challenge protocol, for comparison)", task),
                ("full-size photos only, all bins (served answer)", full.get("all")),
                (f"full-size photos only, bins 0-{top} (served answer)", full.get(f"bins_0_{top}")),
            ]
        ),
        "",
        "The 95% interval (Wilson score) is how far the true accuracy can be from the figure given only those "
        "bins; whether a new model beats this one is a paired question on the same bins, which "
        "`python -m training.compare` answers more sharply than two intervals. RMSE, MAE and off-by-one are on counts"
        + (f" (`{overflow}` counts as {overflow[:-1]})" if overflow else "")
        + '. "Full-size photos" leaves out the sample\'s photos that were already shrunk to 224x224, the closest '
        "to what a warehouse camera sends. Reference points: the ABID challenge's ResNet-34 trained on 481k images "
        "reached 55.67% (RMSE 0.930) under the challenge protocol; course projects on about 10k images report 30-41%.",
        "",
        "### Per class",
        "",
        *_per_class_table(test, task),
        "",
        "Confusion matrix of the served answer, all held-out bins (rows: true count):",
        "",
        *_confusion_table(test),
        "",
        "![Confusion matrix, all held-out bins](confusion_matrix.png)",
        "",
    ]
    return lines + _manual_check_section(metrics.get("manual_check"))


def _distillation_sentence(ensemble: dict[str, Any] | None, training: dict[str, Any]) -> str:
    """What the teachers of a distilled model reached on validation (their ensemble, before distillation)."""
    if not ensemble:
        return ""
    parts = [
        f"{_pct(part.get('after_rule', part['argmax'])['accuracy'])} over {'+'.join(part['views'])}"
        for part in ensemble.values()
    ]
    seeds = ", ".join(map(str, training.get("teacher_seeds", [])))
    return (
        f"Distilled (weight {training.get('distill_weight')}, views {training.get('distill_views', 'same')}) from "
        f"the tops of training seeds {seeds}, whose ensemble scores {' and '.join(parts)} on validation "
        "(served answer, its own answer rule); the model serves as one. "
    )


def _epoch_sentence(training: dict[str, Any], members: dict[str, Any] | None) -> str:
    """Which epoch the weights come from; for a soup, its members and what each scored alone."""
    if not members:
        return f"Epoch kept: {training.get('best_epoch')} (best validation accuracy of the served answer). "
    parts = [
        f"seed {seed} (epoch {part['best_epoch']}, {_pct(part['served'])} on validation with its own answer rule)"
        for seed, part in members.items()
    ]
    return (
        f"Weights: a model soup, the weight-by-weight mean of {len(parts)} tops trained from different seeds, each "
        f"kept at its best validation epoch: {', '.join(parts)}; BatchNorm statistics recomputed for the mean "
        "(`training/recipes/soup.py`). It serves as one model. "
    )


def _head_sentence(metadata: ModelMetadata) -> str:
    if metadata.head != "corn":
        return ""
    questions = metadata.num_classes - 1
    return (
        f'Head: ordinal CORN ({questions} conditional questions "more than k, given more than k-1?", '
        "`service/ordinal_head.py`), served as log class probabilities. "
    )


def _rule_home(metadata: ModelMetadata) -> str:
    return "the CORN head's offsets" if metadata.head == "corn" else "the classifier's bias"


def _selection_section(metadata: ModelMetadata) -> list[str]:
    """How the epoch and the answer rule were chosen (empty for a model that records no validation)."""
    metrics, training = metadata.metrics, metadata.training
    val = metrics.get("validation", {})
    if not val:
        return []
    return [
        "## Training and selection",
        "",
        _epoch_sentence(training, val.get("soup_members"))
        + _head_sentence(metadata)
        + f"Answer rule: one offset per class added to the log-probabilities, tuned on validation and folded "
        f"into {_rule_home(metadata)} (offsets {training.get('answer_rule_offsets')}); validation accuracy "
        f"{_pct(val.get('before_rule', {}).get('accuracy'))} before, {_pct(val.get('served', {}).get('accuracy'))} "
        "after. "
        + (
            "The weights shipped are a final fit on train + validation for that many epochs"
            + (" (each member refit, then averaged). " if val.get("soup_members") else ". ")
            if training.get("final_fit")
            else ""
        )
        + _distillation_sentence(val.get("teachers_ensemble"), training)
        + "Per-epoch figures: `history.json`.",
        "",
        "![Training curves](training_curves.png)",
        "",
    ]


def _recipe_and_data_section(metadata: ModelMetadata, recipe_command: str) -> list[str]:
    """The command that reproduces the model, its settings, the data and the licence."""
    data, training = metadata.data, metadata.training
    split = data.get("split", {})
    return [
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
        f"inherit those terms. The pretrained starting point: {training.get('pretrained', 'ImageNet')} (Apache-2.0).",
        "- Labels are noisy: `EXPECTED_QUANTITY` is what the bin should hold, and items can hide behind "
        "the bin's tape or each other. Treat a low-confidence answer as a reason to look, which is what "
        "`POST /predict` with `expected_quantity` does.",
        "",
        f"Created {metadata.created_at}.",
        "",
    ]


def render_model_card(metadata: ModelMetadata, recipe_command: str, model_dir: Path | None = None) -> str:
    """Markdown text of the card, from ``metadata.metrics`` as the recipe writes them."""
    lines = _answer_section(metadata)
    if model_dir is not None:
        lines += _learning_curve_section(model_dir, metadata)
    lines += _selection_section(metadata)
    lines += _int8_section(metadata)
    lines += _recipe_and_data_section(metadata, recipe_command)
    return "\n".join(lines)


def write_model_card(model_dir: Path, metadata: ModelMetadata, recipe_command: str) -> Path:
    return atomic_write(Path(model_dir) / CARD_FILE, render_model_card(metadata, recipe_command, Path(model_dir)))
