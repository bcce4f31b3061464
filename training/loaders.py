"""Split parts -> batches: epoch-seeded sampling, seeded augmentation, the train and eval loaders.

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
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from service.preprocess import PreprocessSpec
from training.augment import eval_transform, train_transform
from training.config import TrainConfig
from training.dataset import BinDataset, collate_skip_bad
from training.labels import LabelledBin, class_counts


def mix_seed(*values: int | str) -> int:
    """A 63-bit seed from several values (stable across processes and Python versions)."""
    digest = hashlib.blake2b(":".join(map(str, values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)`` for this worker's share of an epoch.

    The epoch's order is a seeded permutation (or, with ``weights``, seeded draws with
    replacement: the balanced sampler), padded to a multiple of ``world_size`` and dealt out
    round-robin, so every worker gets as many samples. ``set_epoch(e, start)`` skips the first
    ``start`` samples of this worker's share (resuming in the middle of an epoch).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, weights: torch.Tensor | None = None):
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
    """:class:`training.dataset.BinDataset` with train augmentation seeded per sample from the sampler's key."""

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
    """Per-item weights of the balanced sampler: ``1 / n_c``, so every present class is drawn equally often."""
    counts = class_counts(items, num_classes)
    return torch.tensor([1.0 / counts[item.label] for item in items], dtype=torch.double)


def auto_num_workers(local_world_size: int) -> int:
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 1 else min(8, max(1, cpus // max(1, local_world_size) - 1))


def train_loader(
    items: Sequence[LabelledBin],
    sampler: EpochSampler,
    spec: PreprocessSpec,
    config: TrainConfig,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    # A last batch of one sample breaks BatchNorm on 1x1 feature maps; drop the ragged tail instead.
    drop_last = sampler.per_worker > config.batch_size
    return DataLoader(
        AugmentedBins(items, spec, config.augment_strength),
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=drop_last,
        collate_fn=collate_skip_bad,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


def steps_per_epoch(sampler: EpochSampler, batch_size: int) -> int:
    n = sampler.per_worker
    return n // batch_size if n > batch_size else 1


def eval_loader(
    items: Sequence[LabelledBin], spec: PreprocessSpec, batch_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    return DataLoader(
        BinDataset(items, eval_transform(spec)),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_skip_bad,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
