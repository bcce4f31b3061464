"""Auxiliary training targets from an ABID bin's item metadata (train-time only, never served).

Each ABID metadata file lists the products in the bin (``BIN_FCSKU_DATA``: quantity, dimensions,
weight). Three figures a photo shows, besides the count:

- ``distinct_products``: how many different products the bin holds;
- ``log_volume``: log(1 + the items' summed box volume, cubic inches): how full the bin looks;
- ``log_weight``: log(1 + the items' summed weight, pounds).

Predicting them beside the count from the same pooled features is a multi-task regulariser for a
small training set. A bin whose metadata does not list its items (the sample's reconstructed
metadata: a count but an empty ``BIN_FCSKU_DATA``) has no targets (NaN), and the loss skips them;
an empty bin has all three at 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from training.layouts import ABID_METADATA_DIR

NAMES = ("distinct_products", "log_volume", "log_weight")

_INCHES = {"IN": 1.0, "INCHES": 1.0, "CM": 1 / 2.54, "CENTIMETERS": 1 / 2.54, "MM": 1 / 25.4}
_POUNDS = {"POUNDS": 1.0, "LB": 1.0, "LBS": 1.0, "KG": 2.20462, "KILOGRAMS": 2.20462, "G": 0.00220462}


def _measure(entry: object, units: dict[str, float]) -> float | None:
    if not isinstance(entry, dict):
        return None
    value, unit = entry.get("value"), str(entry.get("unit", "")).upper()
    if not isinstance(value, int | float) or unit not in units or not math.isfinite(value) or value < 0:
        return None
    return float(value) * units[unit]


def targets_of(metadata: dict) -> tuple[float, float, float] | None:
    """The three targets of one parsed metadata object; None when its items are not listed.

    A figure that needs a measure some item lacks (about 2% of ABID's items have no weight) is NaN.
    """
    items = metadata.get("BIN_FCSKU_DATA") or {}
    count = metadata.get("EXPECTED_QUANTITY")
    if not isinstance(items, dict) or (not items and count != 0):
        return None
    volume = weight = 0.0
    for item in items.values():
        quantity = item.get("quantity", 1) if isinstance(item, dict) else None
        if not isinstance(quantity, int) or quantity < 0:
            return None
        sides = [_measure(item.get(k), _INCHES) for k in ("length", "width", "height")]
        mass = _measure(item.get("weight"), _POUNDS)
        volume = math.nan if None in sides else volume + quantity * sides[0] * sides[1] * sides[2]
        weight = math.nan if mass is None else weight + quantity * mass
    return float(len(items)), math.log1p(volume), math.log1p(weight)


def read_item_targets(data_dir: Path, bin_ids: Sequence[str]) -> torch.Tensor:
    """``(len(bin_ids), 3)`` targets in ``bin_ids`` order, standardised over the known ones; NaN where unknown."""
    rows = []
    for bin_id in bin_ids:
        path = Path(data_dir) / ABID_METADATA_DIR / f"{bin_id}.json"
        try:
            found = targets_of(json.loads(path.read_text()))
        except (OSError, ValueError, AttributeError):
            found = None
        rows.append(found if found is not None else (math.nan,) * len(NAMES))
    targets = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(NAMES))
    for column in targets.T:  # standardised in place, each over its known values
        known = column[~column.isnan()]
        if len(known) > 1:
            column.sub_(known.mean()).div_(known.std().clamp_min(1e-6))
    return targets


def masked_mse(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the known (not NaN) targets; 0 when none is known."""
    known = ~targets.isnan()
    if not known.any():
        return predicted.sum() * 0.0
    return (predicted[known] - targets[known]).pow(2).mean()
