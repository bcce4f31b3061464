"""Jittered copies of every photo for the recipe's feature cache: crop, scale and colour augmentation.

The recipe trains on cached trunk features, so augmentation that is random per draw cannot reach
it; the dihedral variants (flips, 180-degree turn) are exact and cached once each. A jittered copy
is one draw of the library's train-time transform (:class:`training.augment.TrainTransform`: a crop
keeping 80-100% of the photo's area with a mild aspect change, both flips, a rotation of up to
10 degrees, brightness/contrast/saturation/hue jitter) per photo, applied to the full-size JPEG as
``train`` would, then run through the frozen trunk and cached like a variant. Each copy has its own
seed, so copy k is the same tensor on every run and a changed strength or seed is a new cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from service.preprocess import PreprocessSpec, decode_image
from training.augment import train_transform
from training.labels import LabelledBin
from training.recipes.feature_cache import Log, TrunkRunner, cache_key, run_and_cache


def jitter_name(copy: int) -> str:
    """The features key of jittered copy ``copy`` (1-based), beside the dihedral variants' names."""
    return f"jitter{copy}"


def jitter_names(copies: int) -> tuple[str, ...]:
    return tuple(jitter_name(k) for k in range(1, copies + 1))


def jitter_generator(seed: int, copy: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * seed + copy)


def jittered_batches(
    items: Sequence[LabelledBin], spec: PreprocessSpec, strength: float, seed: int, copy: int, chunk: int
):
    """Normalised batches [chunk, 3, S, S] of copy ``copy`` of every photo, in ``items``' order."""
    transform = train_transform(spec, strength, jitter_generator(seed, copy))
    for s in range(0, len(items), chunk):
        part = items[s : s + chunk]
        yield torch.stack([transform(decode_image(item.record.image_path.read_bytes())) for item in part])


def cached_jitter_features(
    cache_dir: Path,
    items: Sequence[LabelledBin],
    spec: PreprocessSpec,
    runner_factory: Callable[[], TrunkRunner],
    key_parts: tuple[object, ...],
    strength: float,
    seed: int,
    copy: int,
    log: Log,
    chunk: int = 64,
) -> torch.Tensor:
    """float16 trunk features of jittered copy ``copy`` of every photo (computed once, then read from disk).

    ``runner_factory`` builds the :class:`TrunkRunner` only when the cache is missing (it exports
    the trunk to ONNX, which takes seconds).
    """
    key = cache_key(items, "jitter", *key_parts, strength, seed, copy)
    path = cache_dir / f"features_{jitter_name(copy)}_{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    batches = jittered_batches(items, spec, strength, seed, copy, chunk)
    return run_and_cache(path, batches, len(items), runner_factory(), f"features_{jitter_name(copy)}", log)
