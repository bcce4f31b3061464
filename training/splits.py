"""Labelled bins -> train / val / test: the reproducible stratified split and the manifest
written next to a model, so evaluation later scores exactly the bins training held out.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

from service.files import atomic_write_json
from training.labels import LabelledBin
from training.layouts import BinRecord, DataError

MANIFEST_FORMAT = 1
#: File name of the split manifest written next to a model (model dir) by training.
SPLIT_MANIFEST_FILE = "split.json"
SPLIT_PARTS = ("train", "val", "test")


@dataclass
class Split:
    train: list[LabelledBin]
    val: list[LabelledBin]
    test: list[LabelledBin]
    seed: int | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None

    def part(self, name: str) -> list[LabelledBin]:
        if name not in SPLIT_PARTS:
            raise ValueError(f"unknown split part {name!r}; expected one of {', '.join(SPLIT_PARTS)}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {name: len(self.part(name)) for name in SPLIT_PARTS}


T = TypeVar("T", LabelledBin, BinRecord)


def _check_unique_ids(items: Iterable[LabelledBin]) -> None:
    seen = Counter(item.id for item in items)
    repeated = [i for i, n in seen.items() if n > 1]
    if repeated:
        raise DataError(f"{len(repeated)} ids occur more than once (e.g. {', '.join(sorted(repeated)[:3])})")


def _part_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n >= 3:  # every part gets a class that can spare one item
        if val_fraction > 0:
            n_val = max(n_val, 1)
        if test_fraction > 0:
            n_test = max(n_test, 1)
    while n_val + n_test >= n and (n_val or n_test):  # keep at least one item for training
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def stratified_split(
    items: Sequence[LabelledBin], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> Split:
    """Reproducible stratified split: the same ids, fractions and seed always give the same parts.

    Each class is sorted by id and shuffled with its own seeded generator, so the result does not
    depend on the input order, and adding a class does not reshuffle the others. A class with at
    least 3 items has at least one in each of val and test (when their fraction is non-zero).
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
            "and leave something for training"
        )
    _check_unique_ids(items)
    by_class: dict[int, list[LabelledBin]] = defaultdict(list)
    for item in items:
        by_class[item.label].append(item)
    train, val, test = [], [], []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda item: item.id)
        random.Random(f"binsight-split:{seed}:{label}").shuffle(members)
        n_val, n_test = _part_sizes(len(members), val_fraction, test_fraction)
        test.extend(members[:n_test])
        val.extend(members[n_test : n_test + n_val])
        train.extend(members[n_test + n_val :])
    key = lambda item: item.id  # noqa: E731
    return Split(
        train=sorted(train, key=key),
        val=sorted(val, key=key),
        test=sorted(test, key=key),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )


@dataclass
class SplitManifest:
    """The split written next to a model: ids per part, so evaluation uses exactly the held-out bins."""

    parts: dict[str, list[str]]
    seed: int | None = None
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def ids(self, part: str) -> list[str]:
        if part not in self.parts:
            raise DataError(f"the split manifest has no part {part!r} (it has: {', '.join(self.parts)})")
        return self.parts[part]


def _part_class_counts(items: Iterable[LabelledBin]) -> dict[str, int]:
    counts = Counter(item.label for item in items)
    return {str(label): counts[label] for label in sorted(counts)}


def write_split_manifest(path: str | os.PathLike, split: Split, extra: dict[str, Any] | None = None) -> Path:
    """Write the split as JSON (atomically): ids per part, class counts per part, seed, fractions, ``extra``."""
    path = Path(path)
    payload = {
        "format": MANIFEST_FORMAT,
        "seed": split.seed,
        "val_fraction": split.val_fraction,
        "test_fraction": split.test_fraction,
        "sizes": split.sizes(),
        "class_counts": {name: _part_class_counts(split.part(name)) for name in SPLIT_PARTS},
        "extra": dict(extra or {}),
        "parts": {name: [item.id for item in split.part(name)] for name in SPLIT_PARTS},
    }
    atomic_write_json(path, payload, indent=1)
    return path


def read_split_manifest(path: str | os.PathLike) -> SplitManifest:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"split manifest {path} is not readable JSON: {exc}") from None
    parts = raw.get("parts") if isinstance(raw, dict) else None
    if not isinstance(parts, dict) or not all(
        isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in parts.values()
    ):
        raise DataError(f"split manifest {path} needs 'parts': an object of lists of string ids")
    return SplitManifest(
        parts=parts, seed=raw.get("seed"), class_counts=raw.get("class_counts") or {}, extra=raw.get("extra") or {}
    )


def select_ids(items: Sequence[T], ids: Sequence[str], strict: bool = True) -> tuple[list[T], list[str]]:
    """The items whose id is in ``ids`` (in the order of ``ids``) and the ids that were not found.

    With ``strict`` a missing id is a :class:`DataError` (the data dir is not the one the split was made on).
    """
    by_id = {item.id: item for item in items}
    found = [by_id[i] for i in ids if i in by_id]
    missing = [i for i in ids if i not in by_id]
    if missing and strict:
        raise DataError(
            f"{len(missing)} of {len(ids)} ids of the split manifest are not in the data "
            f"(e.g. {', '.join(missing[:3])}); is it the data the model was trained on?"
        )
    return found, missing


def split_fingerprint(split: Split) -> str:
    """A short hash of every part's ids and labels: a checkpoint resumes only on the same split."""
    h = hashlib.sha256()
    for name in SPLIT_PARTS:
        h.update(name.encode())
        for item in split.part(name):
            h.update(f"{item.id}={item.label};".encode())
    return h.hexdigest()[:16]
