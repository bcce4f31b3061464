"""Which default-model recipe? Trains variants on the cached features and prints validation figures only.

    python -m training.recipes.sweep --data-dir ../shared/abid \\
        --variant first_tuned_block=13 --variant architecture=efficientnet_lite2,cache_block=15,first_tuned_block=15

Each ``--variant`` is a comma-separated list of RecipeConfig overrides on top of the recipe's defaults
and of ``--base`` (the options that pick and label the bins go in ``--base`` only, so every variant
sees the same split). The test split stays unseen: the chosen recipe runs once afterwards
(``python -m training.recipes.default_model``). Every run checkpoints after each epoch in the cache
folder, so an interrupted sweep rerun with the same options resumes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from training.recipes.default_model import RecipeConfig, log, select_bins, train_and_select

# Options that decide which bins are used and how they are labelled: shared by every variant, so --base only.
DATA_OPTIONS = frozenset(
    {"data_dir", "max_count", "overflow", "limit", "seed", "val_fraction", "test_fraction", "train_fraction"}
)


def overrides(text: str) -> dict[str, str]:
    pairs = [part.split("=", 1) for part in text.split(",") if part]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected key=value[,key=value...], got {text!r}")
    return {k: (tuple(v.split("+")) if k in ("augment", "test_time_views", "teacher_seeds") else v) for k, v in pairs}


def variant_configs(base: RecipeConfig, variants: list[dict[str, str]]) -> list[RecipeConfig]:
    """``base`` with each variant's overrides; only the options that were set carry over.

    Derived values stay derived: ``input_size`` left unset follows each variant's architecture
    (a Lite2 variant gets its native 260 px, not the 224 px base's default).
    """
    return [
        RecipeConfig.model_validate({**base.model_dump(exclude_unset=True), **variant}) for variant in variants or [{}]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/default_model"))
    parser.add_argument("--base", type=overrides, default={}, help="overrides applied to every variant")
    parser.add_argument(
        "--variant",
        type=overrides,
        action="append",
        default=[],
        help="repeatable; lists are joined with '+', e.g. augment=orig+hflip or teacher_seeds=0+1",
    )
    args = parser.parse_args(argv)
    for variant in args.variant:
        if shared := sorted(DATA_OPTIONS & variant.keys()):
            parser.error(f"--variant cannot change {', '.join(shared)}: the bins and labels are shared; use --base")
    try:
        base = RecipeConfig(data_dir=args.data_dir, cache_dir=args.cache_dir, **args.base)
        configs = variant_configs(base, args.variant)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(base.threads)
    bins = select_bins(base)
    for variant, cfg in zip(args.variant or [{}], configs):
        started = time.time()
        name = ",".join(f"{k}={'+'.join(v) if isinstance(v, tuple) else v}" for k, v in variant.items()) or "defaults"
        log(variant=name, status="start")
        result = train_and_select(cfg, bins)
        task = result.val["counts_task"] or {}
        log(
            variant=name,
            best_epoch=result.best_epoch,
            val_acc_argmax=round(result.val["before_rule"]["accuracy"], 4),
            val_acc_served=round(result.val["served"]["accuracy"], 4),
            val_counts_task_acc=round(task.get("accuracy", float("nan")), 4),
            val_counts_task_rmse=round(task.get("rmse", float("nan")), 4),
            seconds=round(time.time() - started),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
