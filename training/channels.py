"""The run's channels -> one labelled, checked split with its provenance (what the artifact records).

A SageMaker channel is a folder (``/opt/ml/input/data/<channel>``): ``train``, optionally
``validation`` and ``test``. Each is read in whatever layout it has (:mod:`training.layouts`),
labelled (:mod:`training.labels`) and image-checked (:mod:`training.dataset`); the parts without
a channel of their own are a stratified, seeded share of ``train`` (:mod:`training.splits`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.dataset import check_images
from training.labels import LabelledBin, LabelPolicy, apply_label_policy, class_counts
from training.layouts import DataError, scan_records
from training.log import Log
from training.sagemaker_env import RunPaths
from training.splits import SPLIT_PARTS, Split, split_fingerprint, stratified_split


@dataclass
class PreparedData:
    """What the loop trains on: the split, the label policy, the provenance recorded in the artifact and
    the split's fingerprint (a checkpoint resumes only on the same one)."""

    policy: LabelPolicy
    split: Split
    provenance: dict[str, Any]
    fingerprint: str
    train_class_counts: list[int] = field(default_factory=list)


def _load_channel(
    name: str, root: Path, policy: LabelPolicy, config: TrainConfig, log: Log
) -> tuple[list[LabelledBin], dict[str, Any]]:
    log(f"channel: {name} dir: {root}")
    records, report = scan_records(root)
    report.log(log)
    items, dropped = apply_label_policy(records, policy)
    log(f"channel: {name} labelled: {len(items)} dropped_above_max_count: {dropped}")
    info: dict[str, Any] = {
        "dir": str(root),
        "layout": report.layout,
        "records": len(records),
        "skipped_files": report.skipped,
        "dropped_above_max_count": dropped,
    }
    if not items:
        raise DataError(
            f"the {name} channel ({root}) has no bins with a count in 0..{policy.max_count} "
            f"({dropped} dropped above max_count; set overflow to true to keep them)"
        )
    if config.limit is not None and len(items) > config.limit:
        items = sorted(random.Random(f"limit:{config.seed}").sample(items, config.limit), key=lambda i: i.id)
        info["limited_to"] = config.limit
    items, bad = check_images(items, max_bad_fraction=config.max_bad_fraction, log=log)
    info["bad_images"] = len(bad)
    info["bad_image_examples"] = [f"{i}: {r}" for i, r in bad[:5]]
    return items, info


def prepare_data(config: TrainConfig, paths: RunPaths, log: Log) -> PreparedData:
    """Read the channels, label them, check the images and split.

    Without a validation (test) channel, the validation (test) part is a stratified, seeded
    share of the train channel; with one, that channel is the part, whole.
    """
    policy = LabelPolicy(max_count=config.max_count, overflow=config.overflow)
    train_items, train_info = _load_channel("train", paths.train, policy, config, log)
    channels = {"train": train_info}
    extra_parts: dict[str, list[LabelledBin]] = {}
    for name, root in (("val", paths.validation), ("test", paths.test)):
        if root is not None:
            extra_parts[name], channels[name] = _load_channel(
                "validation" if name == "val" else name, root, policy, config, log
            )
    split = stratified_split(
        train_items,
        val_fraction=0.0 if "val" in extra_parts else config.val_fraction,
        test_fraction=0.0 if "test" in extra_parts else config.test_fraction,
        seed=config.seed,
    )
    for name, items in extra_parts.items():
        setattr(split, name, sorted(items, key=lambda item: item.id))
    if not split.train:
        raise DataError(f"no bins left for training in {paths.train}")
    overlap = {p: len({i.id for i in split.train} & {i.id for i in part}) for p, part in extra_parts.items()}
    for name, n in overlap.items():
        if n:
            log(f"warning: {n} ids of the {name} channel are also in the train channel")
    counts = {name: class_counts(split.part(name), policy.num_classes) for name in SPLIT_PARTS}
    for name in SPLIT_PARTS:
        log(f"split: {name} bins: {len(split.part(name))} class_counts: {counts[name]}")
    provenance = {
        "channels": channels,
        "labels": policy.labels,
        "label_policy": {"max_count": policy.max_count, "overflow": policy.overflow},
        "split": {
            "seed": config.seed,
            "sizes": split.sizes(),
            "class_counts": counts,
            "val_source": "validation channel" if "val" in extra_parts else f"{config.val_fraction} of train",
            "test_source": "test channel" if "test" in extra_parts else f"{config.test_fraction} of train",
        },
        "dropped_above_max_count": sum(c["dropped_above_max_count"] for c in channels.values()),
        "bad_images": sum(c["bad_images"] for c in channels.values()),
    }
    return PreparedData(
        policy=policy,
        split=split,
        provenance=provenance,
        fingerprint=split_fingerprint(split),
        train_class_counts=counts["train"],
    )
