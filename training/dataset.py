"""Labelled bins -> image tensors: the up-front image check, the ``Dataset`` and the collate
function that drops unreadable images from a batch and reports them instead of failing the epoch.

Decoding is serving's own (:func:`service.preprocess.decode_image`: EXIF orientation, any mode
-> RGB), so training sees what the endpoint will see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence, TypeVar

import torch
from PIL import Image
from torch.utils.data import Dataset

from service.preprocess import ImageDecodeError, decode_image
from training.labels import LabelledBin
from training.layouts import BinRecord, DataError
from training.log import Log, print_line

T = TypeVar("T", LabelledBin, BinRecord)


def check_image(path: Path, full_decode: bool = False) -> str | None:
    """``None`` when the image looks readable, else the reason. Cheap by default (header + verify)."""
    try:
        if full_decode:
            decode_image(path.read_bytes())
            return None
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as image:
            image.verify()
        return None
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # PIL raises many types for bad files
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'unreadable'}"


def check_images(
    items: Sequence[T],
    max_bad_fraction: float = 0.01,
    log: Log | None = print_line,
    full_decode: bool = False,
    log_limit: int = 20,
) -> tuple[list[T], list[tuple[str, str]]]:
    """Split items into readable ones and ``(id, reason)`` for the bad ones; fail above the threshold.

    The default check opens the header and runs PIL's ``verify`` (fast: no pixel decoding), which
    catches non-images and broken headers; a truncated JPEG only shows at load time, where
    :class:`BinDataset` turns it into a skipped sample. ``full_decode`` decodes everything up front.
    """
    good, bad = [], []
    for item in items:
        reason = check_image(Path(item.image_path), full_decode=full_decode)
        if reason is None:
            good.append(item)
        else:
            bad.append((item.id, reason))
            if log is not None and len(bad) <= log_limit:
                log(f"bad_image: {item.id} reason: {reason}")
    total = len(items)
    if log is not None:
        log(f"images_checked: {total} images_bad: {len(bad)}")
    if total and len(bad) / total > max_bad_fraction:
        raise DataError(
            f"{len(bad)} of {total} images ({100 * len(bad) / total:.1f}%) are unreadable, above the limit of "
            f"{100 * max_bad_fraction:.1f}% (e.g. {'; '.join(f'{i}: {r}' for i, r in bad[:3])})"
        )
    return good, bad


@dataclass(frozen=True)
class BadSample:
    """Returned by :class:`BinDataset` in place of an image that could not be loaded."""

    id: str
    reason: str


class Batch(NamedTuple):
    """What :func:`collate_skip_bad` returns: ``images, labels, skipped = batch``.

    ``images`` is empty (``labels.numel() == 0``) when every sample of the batch was bad.
    """

    images: torch.Tensor
    labels: torch.Tensor
    skipped: list[BadSample]


class BinDataset(Dataset):
    """``(image tensor, label)`` per item; an unreadable file gives ``(BadSample, label)`` instead.

    Decoding is :func:`service.preprocess.decode_image` (EXIF orientation, any mode -> RGB), the
    same as serving; ``transform`` maps the upright RGB PIL image to a tensor.
    """

    def __init__(self, items: Sequence[LabelledBin], transform: Callable[[Image.Image], torch.Tensor]):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | BadSample, int]:
        item = self.items[index]
        try:
            image = decode_image(Path(item.image_path).read_bytes())
        except (OSError, ImageDecodeError) as exc:
            return BadSample(id=item.id, reason=str(exc).splitlines()[0][:200]), item.label
        return self.transform(image), item.label


def collate_skip_bad(samples: Sequence[tuple[torch.Tensor | BadSample, int]]) -> Batch:
    """Stack the good samples; the bad ones are dropped and returned in ``Batch.skipped`` to be counted."""
    good = [(x, y) for x, y in samples if not isinstance(x, BadSample)]
    skipped = [x for x, _ in samples if isinstance(x, BadSample)]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    images = torch.stack([x for x, _ in good])
    labels = torch.tensor([y for _, y in good], dtype=torch.long)
    return Batch(images, labels, skipped)
