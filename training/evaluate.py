"""Evaluate a model artifact on a data directory: metrics JSON, per-bin predictions, PNG plots.

    python -m training.evaluate --model-dir model/ --data-dir ../shared/abid \\
        --split-manifest model/split.json --part test --output-dir eval/

The artifact is loaded with :func:`service.artifact.load_artifact` and images go through
serving's own preprocessing (:func:`service.preprocess.decode_image` + ``image_to_tensor``), so
the numbers are what the endpoint would score. Labels come from the artifact: counts above its
largest class are dropped (or fall in its overflow class). The training loop calls
:func:`evaluate_model` directly.

Every option can also be set in the environment as ``BINSIGHT_EVAL_<OPTION>`` (e.g.
``BINSIGHT_EVAL_BATCH_SIZE=32``); command-line options win.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.data import DataLoader

from service.artifact import ArtifactError, ModelMetadata, load_artifact
from service.files import atomic_write, atomic_write_json
from service.options import parse_options
from service.test_time import view_probabilities
from training.augment import eval_transform
from training.dataset import BadSample, BinDataset, check_images, collate_skip_bad
from training.device import resolve_device
from training.intervals import wilson_interval
from training.labels import LabelledBin, LabelPolicy, apply_label_policy
from training.layouts import DataError, scan_records
from training.log import Log, print_line
from training.metrics import compute_metrics, counts_task_metrics, format_metrics
from training.splits import SPLIT_MANIFEST_FILE, read_split_manifest, select_ids

ENV_PREFIX = "BINSIGHT_EVAL_"
HISTORY_FILE = "history.json"


class EvaluateConfig(BaseModel):
    """Options of ``python -m training.evaluate``."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path = Field(..., description="Artifact directory (model.pth + model.json).")
    data_dir: Path = Field(..., description="ABID or count-folder data directory.")
    split_manifest: Path | None = Field(None, description="Split manifest; evaluate only the ids of --part.")
    part: Literal["train", "val", "test"] = Field("test", description="Part of the split manifest to evaluate.")
    output_dir: Path | None = Field(
        None, description="Where metrics.json and plots go (default <model-dir>/evaluation)."
    )
    tta_flip: bool = Field(False, description="Average the predictions of the image and its horizontal mirror.")
    batch_size: int = Field(64, ge=1, le=4096)
    limit: int | None = Field(None, ge=1, description="Evaluate a seeded random subset of this many bins.")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0, description="Fail above this share of unreadable images.")
    seed: int = Field(0, description="Seed of the --limit subset.")

    @model_validator(mode="after")
    def _defaults(self) -> "EvaluateConfig":
        if self.output_dir is None:
            self.output_dir = self.model_dir / "evaluation"
        return self


def label_policy_for(metadata: ModelMetadata) -> LabelPolicy:
    """The label policy an artifact was trained with, read back from its labels."""
    values = metadata.class_values
    return LabelPolicy(
        max_count=int(values[-2] if metadata.has_overflow_class else values[-1]), overflow=metadata.has_overflow_class
    )


@torch.inference_mode()
def predict_items(
    model: nn.Module,
    metadata: ModelMetadata,
    items: Sequence[LabelledBin],
    batch_size: int = 64,
    tta_flip: bool = False,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str], list[Any]]:
    """Class probabilities for the readable items: ``(probs [n, K], labels [n], ids, skipped)``.

    Uses serving's preprocessing and the model's test-time views (``tta_flip`` adds the mirror image
    when they lack it); unreadable images are skipped (returned as ``BadSample``).
    """
    views = list(metadata.test_time_views)
    if tta_flip and "hflip" not in views:
        views.append("hflip")
    if device is None:
        device = next(model.parameters()).device
    dataset = _IndexedDataset(BinDataset(items, eval_transform(metadata.preprocess_spec())))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate_indexed
    )
    was_training = model.training
    model.eval()
    probs, labels, ids, skipped = [], [], [], []
    try:
        for images, batch_labels, indices, bad in loader:
            skipped.extend(bad)
            if batch_labels.numel() == 0:
                continue
            images = images.to(device, non_blocking=True)
            p = view_probabilities(model, images, views)
            probs.append(p.cpu())
            labels.append(batch_labels)
            ids.extend(items[i].id for i in indices)
    finally:
        model.train(was_training)
    num_classes = metadata.num_classes
    if not probs:
        return torch.empty(0, num_classes), torch.empty(0, dtype=torch.long), ids, skipped
    return torch.cat(probs), torch.cat(labels), ids, skipped


class _IndexedDataset(torch.utils.data.Dataset):
    def __init__(self, inner: BinDataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        x, y = self.inner[index]
        return x, y, index


def _collate_indexed(samples):
    batch = collate_skip_bad([(x, y) for x, y, _ in samples])
    indices = [i for x, _, i in samples if not isinstance(x, BadSample)]
    return batch.images, batch.labels, indices, batch.skipped


def counts_task_key(labels: Sequence[str]) -> str:
    """``counts_0_5`` for labels 0..5 + "6+": where the counting task's metrics are kept."""
    return f"counts_0_{len(labels) - 2}"


def evaluate_model(
    model: nn.Module,
    metadata: ModelMetadata,
    items: Sequence[LabelledBin],
    batch_size: int = 64,
    tta_flip: bool = False,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``items`` (labels already per ``metadata.labels``) with eval == serving.

    With an overflow class, ``counts_0_N`` holds the ABID challenge's task (:func:`counts_task_metrics`).

    Returns :func:`training.metrics.compute_metrics`'s dict plus ``loss`` (cross entropy of the
    predicted probabilities), ``accuracy_interval_95`` (the accuracy's Wilson interval), ``skipped``
    (unreadable images) and ``tta_flip``; with ``return_predictions`` also ``predictions``: one
    ``{id, label, predicted, probability}`` per bin.
    The model's train/eval mode is restored afterwards.
    """
    probs, labels, ids, skipped = predict_items(model, metadata, items, batch_size, tta_flip, num_workers, device)
    if labels.numel() == 0:
        raise DataError(f"none of the {len(items)} images could be evaluated ({len(skipped)} unreadable)")
    predicted = probs.argmax(1)
    metrics = compute_metrics(predicted, labels, metadata.class_values, metadata.labels)
    picked = probs.gather(1, labels.view(-1, 1)).clamp_min(1e-12)
    metrics["loss"] = float(-picked.log().mean())
    metrics["accuracy_interval_95"] = list(wilson_interval(int((predicted == labels).sum()), int(labels.numel())))
    metrics["skipped"] = len(skipped)
    metrics["skipped_ids"] = [b.id for b in skipped][:100]
    metrics["tta_flip"] = tta_flip
    counts_task = counts_task_metrics(probs, labels, metadata.class_values, metadata.labels)
    if counts_task is not None:
        metrics[counts_task_key(metadata.labels)] = counts_task
    if return_predictions:
        metrics["predictions"] = [
            {
                "id": i,
                "label": metadata.labels[int(t)],
                "predicted": metadata.labels[int(p)],
                "probability": round(float(probs[k, p]), 6),
            }
            for k, (i, t, p) in enumerate(zip(ids, labels.tolist(), predicted.tolist()))
        ]
    return metrics


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str = "Confusion matrix"
) -> Path:
    """Counts with row-normalised colour (recall per true class), true classes on the y axis."""
    plt = _pyplot()
    m = torch.tensor(matrix, dtype=torch.float64)
    rows = m.sum(1, keepdim=True).clamp_min(1)
    share = (m / rows).tolist()
    size = max(4.0, 0.6 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), labels=class_names)
    ax.set_yticks(range(len(class_names)), labels=class_names)
    ax.set_xlabel("predicted count")
    ax.set_ylabel("true count")
    ax.set_title(title)
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            ax.text(
                c,
                r,
                str(int(value)),
                ha="center",
                va="center",
                color="white" if share[r][c] > 0.5 else "black",
                fontsize=8,
            )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_history(model_dir: Path) -> list[dict[str, Any]] | None:
    """``history.json`` of a model dir (a list of per-epoch dicts), or ``None`` when absent or unusable."""
    path = model_dir / HISTORY_FILE
    if not path.is_file():
        return None
    try:
        history = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(history, dict):  # tolerate {"epochs": [...]}
        history = history.get("epochs") or history.get("history")
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history) or not history:
        return None
    return history


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Loss, accuracy and RMSE per epoch, one panel each, for every numeric key that names them."""
    plt = _pyplot()
    groups = {"loss": [], "accuracy": [], "rmse": []}
    keys = sorted({k for e in history for k, v in e.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for key in keys:
        for group in groups:
            if key.endswith(group) or key.endswith("_acc") and group == "accuracy":
                groups[group].append(key)
                break
    panels = [(g, ks) for g, ks in groups.items() if ks]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (group, ks) in zip(axes[0], panels):
        for key in ks:
            points = [
                (e.get("epoch", i + 1), e[key]) for i, e in enumerate(history) if isinstance(e.get(key), (int, float))
            ]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(group)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(
    output_dir: str | os.PathLike,
    metrics: dict[str, Any],
    history: Sequence[dict[str, Any]] | None,
    class_names: Sequence[str],
    title: str = "Confusion matrix",
) -> list[Path]:
    """``confusion_matrix.png`` from ``metrics`` and, when a history is given, ``training_curves.png``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [plot_confusion_matrix(metrics["confusion_matrix"], class_names, out / "confusion_matrix.png", title)]
    if history:
        curves = plot_training_curves(history, out / "training_curves.png")
        if curves is not None:
            files.append(curves)
    return files


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def select_items(
    config: EvaluateConfig, metadata: ModelMetadata, log: Log = print_line
) -> tuple[list[LabelledBin], dict]:
    """The labelled bins to evaluate (manifest part, label policy, image check, limit) and what was left out."""
    records, report = scan_records(config.data_dir)
    report.log(log)
    info: dict[str, Any] = {
        "data_dir": str(config.data_dir),
        "layout": report.layout,
        "records": len(records),
        "skipped_files": report.skipped,
    }
    if config.split_manifest is not None:
        manifest = read_split_manifest(config.split_manifest)
        records, _ = select_ids(records, manifest.ids(config.part), strict=True)
        info.update(split_manifest=str(config.split_manifest), part=config.part, split_seed=manifest.seed)
    else:
        info.update(part="all")
        if (config.model_dir / SPLIT_MANIFEST_FILE).is_file():
            log(
                f"eval_hint: the model dir has {SPLIT_MANIFEST_FILE}; "
                "pass --split-manifest to evaluate only its held-out part"
            )
    items, dropped = apply_label_policy(records, label_policy_for(metadata))
    info["dropped_above_max_count"] = dropped
    if config.limit is not None and len(items) > config.limit:
        items = sorted(random.Random(config.seed).sample(items, config.limit), key=lambda item: item.id)
        info["limit"] = config.limit
    items, bad = check_images(items, max_bad_fraction=config.max_bad_fraction, log=log)
    info["bad_images"] = len(bad)
    if not items:
        raise DataError(
            f"no bins to evaluate in {config.data_dir} (part {info['part']}, {dropped} dropped "
            f"above count {metadata.labels[-1]})"
        )
    return items, info


def log_metrics(metrics: dict[str, Any], labels: Sequence[str], dropped: int, log: Log = print_line) -> None:
    """The evaluation's ``eval_*`` lines (what SageMaker's metric regexes read)."""
    log(format_metrics(metrics, "eval_"))
    if "accuracy_interval_95" in metrics:  # how far the true accuracy can be, from these bins alone
        low, high = metrics["accuracy_interval_95"]
        log(f"eval_accuracy_low_95: {low:.4f}")
        log(f"eval_accuracy_high_95: {high:.4f}")
    task_key = counts_task_key(labels)
    if task_key in metrics:
        log(format_metrics(metrics[task_key], f"eval_{task_key}_"))
    log(f"eval_loss: {metrics['loss']:.4f}")
    log(f"eval_skipped: {metrics['skipped']}")
    log(f"eval_dropped: {dropped}")
    for name, accuracy in metrics["per_class_accuracy"].items():
        log(f"eval_class_{name.replace('+', 'plus')}_accuracy: {'n/a' if accuracy is None else f'{accuracy:.4f}'}")


def run(config: EvaluateConfig, log: Log = print_line) -> dict[str, Any]:
    """Evaluate and write ``metrics.json``, ``predictions.csv``, ``confusion_matrix.png`` and, when the
    model dir has a ``history.json``, ``training_curves.png`` into ``config.output_dir``."""
    start = time.monotonic()
    device = resolve_device(config.device)
    artifact = load_artifact(config.model_dir, device=device)
    metadata = artifact.metadata
    items, info = select_items(config, metadata, log)
    metrics = evaluate_model(
        artifact.model,
        metadata,
        items,
        batch_size=config.batch_size,
        tta_flip=config.tta_flip,
        num_workers=config.num_workers,
        device=device,
        return_predictions=True,
    )
    predictions = metrics.pop("predictions")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "metrics": metrics,
        "model": {
            "dir": str(config.model_dir),
            "architecture": metadata.architecture,
            "labels": metadata.labels,
            "input_size": metadata.input_size,
            "resize": metadata.resize,
        },
        "data": info,
        "config": json.loads(config.model_dump_json()),
        "seconds": round(time.monotonic() - start, 2),
    }
    atomic_write_json(out / "metrics.json", result)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=["id", "label", "predicted", "probability"])
    writer.writeheader()
    writer.writerows(predictions)
    atomic_write(out / "predictions.csv", table.getvalue())
    files = [out / "metrics.json", out / "predictions.csv"]
    files += write_plots(
        out,
        metrics,
        read_history(config.model_dir),
        metadata.labels,
        title=f"{metadata.architecture}: {info['part']} (n={metrics['n']})",
    )
    log_metrics(metrics, metadata.labels, info["dropped_above_max_count"], log)
    for path in files:
        log(f"eval_wrote: {path}")
    result["files"] = [str(p) for p in files]
    return result


def parse_config(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> EvaluateConfig:
    """Options from ``BINSIGHT_EVAL_*`` variables, overridden by the command line; exits 2 on bad input."""
    return parse_options(EvaluateConfig, ENV_PREFIX, "python -m training.evaluate", __doc__, argv, environ)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        run(config)
    except (ArtifactError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
