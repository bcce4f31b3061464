"""Which default-model recipe? Trains several variants on the cached features and prints validation figures.

    .venv/bin/python benchmarks/default_model_sweep.py --data-dir ../shared/abid \\
        --variant first_tuned_block=15 --variant feature_dropout=0.2,weight_decay=0.1

Each ``--variant`` is a comma-separated list of RecipeConfig overrides on top of the recipe's defaults
(and of ``--base``; the options that pick and label the bins, such as ``overflow``, go in ``--base``
only). Only the validation split is used: the test split stays unseen until the chosen
recipe runs once (``python -m training.default_model``), so choosing here does not flatter the test
figures. Prints one ``key: value`` line per epoch and a summary line per variant: best validation
accuracy on all classes and on the bins holding 0..max_count (answer restricted to those classes).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.architectures import build_model  # noqa: E402
from service.artifact import metadata_for  # noqa: E402
from training import default_model as recipe  # noqa: E402
from training.metrics import compute_metrics, counts_task_metrics  # noqa: E402


# Options that decide which bins are used and how they are labelled: shared by every variant, so --base only.
DATA_OPTIONS = frozenset({"data_dir", "max_count", "overflow", "limit", "seed", "val_fraction", "test_fraction"})


def overrides(text: str) -> dict[str, str]:
    pairs = [part.split("=", 1) for part in text.split(",") if part]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected key=value[,key=value...], got {text!r}")
    return dict(pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "default_model")
    parser.add_argument("--base", type=overrides, default={}, help="overrides applied to every variant")
    parser.add_argument("--variant", type=overrides, action="append", default=[], help="repeatable")
    args = parser.parse_args()
    for variant in args.variant:
        if shared := sorted(DATA_OPTIONS & variant.keys()):
            parser.error(f"--variant cannot change {', '.join(shared)}: the bins and labels are shared; use --base")
    base = recipe.RecipeConfig(data_dir=args.data_dir, cache_dir=args.cache_dir, **args.base)
    torch.set_num_threads(base.threads)
    bins = recipe.select_bins(base)
    labels = torch.tensor([item.label for item in bins.items])
    train_idx, val_idx = bins.indices(bins.split.train), bins.indices(bins.split.val)
    for variant in args.variant or [{}]:
        cfg = recipe.RecipeConfig.model_validate({**base.model_dump(), **variant})
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        started = time.time()
        metadata = metadata_for(recipe.ARCHITECTURE, bins.policy.labels, input_size=cfg.input_size,
                                resize="squash", dropout=cfg.dropout)
        model = build_model(recipe.ARCHITECTURE, bins.policy.num_classes, pretrained=True, dropout=cfg.dropout)
        features = recipe.tuning_features(cfg, model, metadata.preprocess_spec(), bins.items)
        history = recipe.train_top(cfg, model, features, labels, train_idx, val_idx, bins.policy.num_classes)
        views = [features["orig"]] + ([features["hflip"]] if cfg.tta_flip else [])
        probs = recipe._probabilities(model, views, val_idx, cfg.first_tuned_block)
        task = counts_task_metrics(probs, labels[val_idx], metadata.class_values, metadata.labels) or \
            compute_metrics(probs.argmax(1), labels[val_idx], metadata.class_values, metadata.labels)
        print(f"variant: {','.join(f'{k}={v}' for k, v in variant.items()) or 'defaults'} "
              f"best_val_acc: {max(h['val_acc'] for h in history):.4f} "
              f"best_epoch: {max(history, key=lambda h: h['val_acc'])['epoch']} "
              f"val_0_{cfg.max_count}_acc_tta: {task['accuracy']:.4f} "
              f"val_0_{cfg.max_count}_rmse_tta: {task['rmse']:.4f} "
              f"seconds: {time.time() - started:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
