"""Counts -> classes: which counts are classes, which bins are dropped, how many per class.

Counts ``0..max_count`` are the classes; a bin holding more is dropped or, with ``overflow``,
falls in one ``"N+"`` class (the labels are :func:`service.artifact.count_labels`, the same the
artifact records).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from service.artifact import count_labels
from training.layouts import BinRecord


@dataclass(frozen=True)
class LabelPolicy:
    """Counts 0..max_count are classes; larger counts are dropped or, with ``overflow``, one "N+" class."""

    max_count: int = 5
    overflow: bool = False

    def __post_init__(self) -> None:
        if self.max_count < 1:
            raise ValueError(f"max_count must be at least 1, got {self.max_count}")

    @property
    def labels(self) -> list[str]:
        return count_labels(self.max_count, self.overflow)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def class_of(self, count: int) -> int | None:
        """Class index of a count, or ``None`` when the bin is dropped."""
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        if count <= self.max_count:
            return count
        return self.max_count + 1 if self.overflow else None


@dataclass(frozen=True)
class LabelledBin:
    record: BinRecord
    label: int

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def image_path(self) -> Path:
        return self.record.image_path


def apply_label_policy(records: Iterable[BinRecord], policy: LabelPolicy) -> tuple[list[LabelledBin], int]:
    """Label each record; returns the labelled bins and how many were dropped (count above max_count)."""
    items, dropped = [], 0
    for record in records:
        label = policy.class_of(record.count)
        if label is None:
            dropped += 1
        else:
            items.append(LabelledBin(record=record, label=label))
    return items, dropped


def class_counts(items: Iterable[LabelledBin], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for item in items:
        if not 0 <= item.label < num_classes:
            raise ValueError(f"label {item.label} of {item.id} is outside 0..{num_classes - 1}")
        counts[item.label] += 1
    return counts
