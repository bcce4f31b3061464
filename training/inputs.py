"""From channels to batches: labelled split with provenance, epoch-seeded sampling, data loaders.

Randomness in the input pipeline is a pure function of ``(seed, epoch, position)``: the order of
an epoch comes from a generator seeded by ``(seed, epoch)``, and each sample's augmentation from
one seeded by ``(seed, epoch, position in that order)``. So the batches do not depend on the
number of DataLoader workers, and a run resumed in the middle of an epoch sees exactly the
batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from service.preprocess import PreprocessSpec
from training.augment import eval_transform, train_transform
from training.config import TrainConfig
from training.data import (
    BinDataset,
    DataError,
    LabelledBin,
    LabelPolicy,
    Split,
    apply_label_policy,
    balanced_sampler,
    check_images,
    class_counts,
    scan_records,
    stratified_split,
)
from training.sagemaker_env import RunPaths

Log = Callable[[str], None]


def mix_seed(*values: int | str) -> int:
    """A 63-bit seed from several values (stable across processes and Python versions)."""
    digest = hashlib.blake2b(":".join(map(str, values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


# --------------------------------------------------------------------------------------------
# Channels -> split
# --------------------------------------------------------------------------------------------

@dataclass
class PreparedData:
    policy: LabelPolicy
    split: Split
    provenance: dict[str, Any]
    fingerprint: str
    train_class_counts: list[int] = field(default_factory=list)


def _load_channel(name: str, root: Path, policy: LabelPolicy, config: TrainConfig,
                  log: Log) -> tuple[list[LabelledBin], dict[str, Any]]:
    log(f"channel: {name} dir: {root}")
    records, report = scan_records(root)
    report.log(log)
    items, dropped = apply_label_policy(records, policy)
    log(f"channel: {name} labelled: {len(items)} dropped_above_max_count: {dropped}")
    info: dict[str, Any] = {"dir": str(root), "layout": report.layout, "records": len(records),
                            "skipped_files": report.skipped, "dropped_above_max_count": dropped}
    if not items:
        raise DataError(f"the {name} channel ({root}) has no bins with a count in 0..{policy.max_count} "
                        f"({dropped} dropped above max_count; set overflow to true to keep them)")
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
                "validation" if name == "val" else name, root, policy, config, log)
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
    overlap = {p: len({i.id for i in split.train} & {i.id for i in part})
               for p, part in extra_parts.items()}
    for name, n in overlap.items():
        if n:
            log(f"warning: {n} ids of the {name} channel are also in the train channel")
    counts = {name: class_counts(split.part(name), policy.num_classes) for name in ("train", "val", "test")}
    for name in ("train", "val", "test"):
        log(f"split: {name} bins: {len(split.part(name))} class_counts: {counts[name]}")
    provenance = {
        "channels": channels,
        "labels": policy.labels,
        "label_policy": {"max_count": policy.max_count, "overflow": policy.overflow},
        "split": {"seed": config.seed, "sizes": split.sizes(), "class_counts": counts,
                  "val_source": "validation channel" if "val" in extra_parts else f"{config.val_fraction} of train",
                  "test_source": "test channel" if "test" in extra_parts else f"{config.test_fraction} of train"},
        "dropped_above_max_count": sum(c["dropped_above_max_count"] for c in channels.values()),
        "bad_images": sum(c["bad_images"] for c in channels.values()),
    }
    return PreparedData(policy=policy, split=split, provenance=provenance, fingerprint=split_fingerprint(split),
                        train_class_counts=counts["train"])


def split_fingerprint(split: Split) -> str:
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        h.update(name.encode())
        for item in split.part(name):
            h.update(f"{item.id}={item.label};".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Sampling and datasets
# --------------------------------------------------------------------------------------------

class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)`` for this worker's share of an epoch.

    The epoch's order is a seeded permutation (or, with ``weights``, seeded draws with
    replacement: the balanced sampler), padded to a multiple of ``world_size`` and dealt out
    round-robin, so every worker gets as many samples. ``set_epoch(e, start)`` skips the first
    ``start`` samples of this worker's share (resuming in the middle of an epoch).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None):
        if n < 1:
            raise ValueError("EpochSampler needs at least one item")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.weights = weights
        self.epoch, self.start = 0, 0

    @property
    def per_worker(self) -> int:
        return math.ceil(self.n / self.world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(mix_seed("order", self.seed, epoch))
        if self.weights is None:
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=generator).tolist()
        padding = self.per_worker * self.world_size - self.n
        return order + order[:padding]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order(self.epoch)
        for j in range(self.start, self.per_worker):
            position = j * self.world_size + self.rank
            yield order[position], mix_seed("sample", self.seed, self.epoch, position)

    def __len__(self) -> int:
        return self.per_worker - self.start


class AugmentedBins(Dataset):
    """:class:`training.data.BinDataset` with train augmentation seeded per sample from the sampler's key."""

    def __init__(self, items: Sequence[LabelledBin], spec: PreprocessSpec, strength: float):
        self.items, self.spec, self.strength = list(items), spec, strength
        self._inner: BinDataset | None = None
        self._generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        if self._inner is None:  # built in the process that uses it (DataLoader workers)
            self._generator = torch.Generator()
            self._inner = BinDataset(self.items, train_transform(self.spec, self.strength, generator=self._generator))
        self._generator.manual_seed(seed)
        return self._inner[index]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_inner": None, "_generator": None}


def sampling_weights(items: Sequence[LabelledBin], num_classes: int) -> torch.Tensor:
    """Per-item weights of the balanced sampler (every present class drawn equally often)."""
    return torch.as_tensor(balanced_sampler(items, num_classes).weights, dtype=torch.double)


def auto_num_workers(local_world_size: int) -> int:
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 1 else min(8, max(1, cpus // max(1, local_world_size) - 1))


def train_loader(items: Sequence[LabelledBin], sampler: EpochSampler, spec: PreprocessSpec, config: TrainConfig,
                 num_workers: int, pin_memory: bool, collate: Callable) -> DataLoader:
    # A last batch of one sample breaks BatchNorm on 1x1 feature maps; drop the ragged tail instead.
    drop_last = sampler.per_worker > config.batch_size
    return DataLoader(AugmentedBins(items, spec, config.augment_strength), batch_size=config.batch_size,
                      sampler=sampler, drop_last=drop_last, collate_fn=collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0, pin_memory=pin_memory)


def steps_per_epoch(sampler: EpochSampler, batch_size: int) -> int:
    n = sampler.per_worker
    return n // batch_size if n > batch_size else 1


def eval_loader(items: Sequence[LabelledBin], spec: PreprocessSpec, batch_size: int, num_workers: int,
                pin_memory: bool, collate: Callable) -> DataLoader:
    return DataLoader(BinDataset(items, eval_transform(spec)), batch_size=batch_size, shuffle=False,
                      collate_fn=collate, num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=pin_memory)
