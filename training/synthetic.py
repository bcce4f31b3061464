"""Synthetic bins for tests: learnable fake data in the ABID layout and in the course layout.

Each photo is a bin-like background (cardboard or grey tone, faint tape straps, mild noise) with
``count`` clearly drawn, saturated, outlined rectangles and ellipses that barely overlap, so the
count is visually obvious even at 64 px and a small CNN learns it within seconds.
"""

from __future__ import annotations

import colorsys
import json
import random
import string
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from training.layouts import ABID_IMAGE_DIR, ABID_METADATA_DIR, BinRecord

_BACKGROUNDS = [(150, 120, 85), (170, 140, 100), (120, 118, 112), (95, 92, 88), (185, 175, 160)]


def _object_colour(rng: random.Random) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.8, 1.0), rng.uniform(0.75, 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def _place(
    rng: random.Random, width: int, height: int, count: int, side: int, tries: int = 300
) -> list[tuple[int, int, int, int]]:
    """Boxes of roughly ``side`` px inside the image, kept apart by a small gap where they fit.

    Each box takes the first random position that keeps a gap of ``side // 6`` to the others, or
    else the position with the least overlap found in ``tries`` attempts.
    """
    boxes: list[tuple[int, int, int, int]] = []
    margin = max(1, side // 8)
    gap = max(1, side // 6)
    for _ in range(count):
        best, best_overlap = None, None
        for _ in range(tries):
            w = max(4, round(side * rng.uniform(0.75, 1.25)))
            h = max(4, round(side * rng.uniform(0.75, 1.25)))
            x0 = rng.randint(margin, max(margin, width - w - margin))
            y0 = rng.randint(margin, max(margin, height - h - margin))
            box = (x0, y0, x0 + w, y0 + h)
            padded = (x0 - gap, y0 - gap, x0 + w + gap, y0 + h + gap)
            worst = max((_overlap(padded, other) for other in boxes), default=0)
            if best_overlap is None or worst < best_overlap:
                best, best_overlap = box, worst
            if worst == 0:
                break
        boxes.append(best)
    return boxes


def draw_bin(rng: random.Random, count: int, size: int = 128, max_objects: int = 5) -> Image.Image:
    """One RGB bin photo of ``size`` px width (height 75-100% of it) holding ``count`` objects.

    ``max_objects`` (the largest count in the data set) sets the object size so that the fullest
    bin still fits its objects without much overlap.
    """
    width = size
    height = max(16, round(size * rng.uniform(0.75, 1.0)))
    base = rng.choice(_BACKGROUNDS)
    tone = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in base)
    image = Image.new("RGB", (width, height), tone)
    draw = ImageDraw.Draw(image)
    # Mild texture: a vertical shading band and faint tape straps, as on real bins.
    for x in range(0, width, max(1, width // 16)):
        shade = rng.randint(-8, 8)
        draw.rectangle((x, 0, x + width // 16, height), fill=tuple(max(0, min(255, c + shade)) for c in tone))
    for _ in range(rng.randint(1, 3)):
        y = rng.randint(0, height - 1)
        strap = tuple(max(0, min(255, c + 25)) for c in tone)
        draw.line((0, y, width, y + rng.randint(-height // 10, height // 10)), fill=strap, width=max(1, size // 64))
    side = round(min(width, height) * min(0.26, 0.8 / (max(1, max_objects) ** 0.5 + 1)))
    for box in _place(rng, width, height, count, side):
        colour = _object_colour(rng)
        outline = tuple(c // 3 for c in colour)
        stroke = max(1, size // 64)
        if rng.random() < 0.5:
            draw.rectangle(box, fill=colour, outline=outline, width=stroke)
        else:
            draw.ellipse(box, fill=colour, outline=outline, width=stroke)
    return image


def _products(rng: random.Random, count: int) -> dict[str, dict]:
    """``BIN_FCSKU_DATA`` in ABID format: a few products whose quantities sum to ``count``."""
    products: dict[str, dict] = {}
    if count == 0:
        return products
    kinds = rng.randint(1, min(count, 3))
    cuts = sorted(rng.sample(range(1, count), kinds - 1)) if kinds > 1 else []
    quantities = [b - a for a, b in zip([0] + cuts, cuts + [count])]
    for quantity in quantities:
        asin = "B0" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=8))
        name = f"Synthetic {rng.choice(['box', 'tube', 'pouch', 'bottle', 'book'])} {asin[-4:]}"
        products[asin] = {
            "asin": asin,
            "name": name,
            "normalizedName": name,
            "quantity": quantity,
            "height": {"unit": "IN", "value": round(rng.uniform(0.5, 8), 3)},
            "length": {"unit": "IN", "value": round(rng.uniform(1, 12), 3)},
            "width": {"unit": "IN", "value": round(rng.uniform(1, 8), 3)},
            "weight": {"unit": "pounds", "value": round(rng.uniform(0.05, 3), 3)},
        }
    return products


def _balanced_counts(rng: random.Random, n: int, num_values: int) -> list[int]:
    """``n`` counts in 0..num_values-1, every value as often as possible (all present once n >= num_values)."""
    counts = [i % num_values for i in range(n)]
    rng.shuffle(counts)
    return counts


def make_synthetic_abid(
    root: str | Path,
    n_bins: int,
    max_count: int = 5,
    size: int = 128,
    seed: int = 0,
    overflow_extra: int = 0,
    first_id: int = 1,
) -> list[BinRecord]:
    """Write ``n_bins`` synthetic bins in the ABID layout under ``root``; returns their records.

    Counts are balanced over ``0..max_count + overflow_extra`` (``overflow_extra > 0`` makes bins
    above ``max_count`` for testing the drop / overflow policy). Ids are 5-digit strings from ``first_id``.
    """
    root = Path(root)
    (root / ABID_IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (root / ABID_METADATA_DIR).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    top = max_count + overflow_extra
    records = []
    for i, count in enumerate(_balanced_counts(rng, n_bins, top + 1)):
        bin_id = f"{first_id + i:05d}"
        image_path = root / ABID_IMAGE_DIR / f"{bin_id}.jpg"
        draw_bin(rng, count, size, max_objects=top).save(image_path, "JPEG", quality=92)
        metadata = {"BIN_FCSKU_DATA": _products(rng, count), "EXPECTED_QUANTITY": count}
        (root / ABID_METADATA_DIR / f"{bin_id}.json").write_text(json.dumps(metadata, indent=4))
        records.append(BinRecord(id=bin_id, image_path=image_path, count=count))
    return records


def make_synthetic_folders(
    root: str | Path,
    n_images: int,
    max_count: int = 5,
    size: int = 128,
    seed: int = 0,
    subdir: str | None = "train",
    overflow_extra: int = 0,
) -> list[BinRecord]:
    """Write synthetic bins in the course layout (``<subdir>/<count>/bin_<i>.jpg``); returns their records."""
    root = Path(root)
    base = root / subdir if subdir else root
    rng = random.Random(seed)
    top = max_count + overflow_extra
    records = []
    for i, count in enumerate(_balanced_counts(rng, n_images, top + 1)):
        folder = base / str(count)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"bin_{i:05d}.jpg"
        draw_bin(rng, count, size, max_objects=top).save(path, "JPEG", quality=92)
        records.append(BinRecord(id=path.relative_to(root).as_posix(), image_path=path, count=count))
    return records


CORRUPTIONS = ("truncated", "text", "empty")


def corrupt_file(path: Path, kind: str) -> None:
    """Damage one image in place: ``truncated`` (first third of a JPEG), ``text`` or ``empty``."""
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: max(64, len(data) // 3)])
    elif kind == "text":
        path.write_text("this is not an image, whatever the file name says\n")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(CORRUPTIONS)}")


def corrupt_some(
    root: str | Path, k: int, seed: int = 0, kinds: Sequence[str] = ("truncated", "text")
) -> list[tuple[Path, str]]:
    """Corrupt ``k`` images under ``root`` (chosen with ``seed``), cycling through ``kinds``.

    Returns ``(path, kind)`` for each damaged file. A truncated JPEG passes the cheap header check
    and fails at decode time; a text file fails both.
    """
    images = sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if k > len(images):
        raise ValueError(f"cannot corrupt {k} images: only {len(images)} under {root}")
    chosen = random.Random(seed).sample(images, k)
    done = []
    for i, path in enumerate(sorted(chosen)):
        kind = kinds[i % len(kinds)]
        corrupt_file(path, kind)
        done.append((path, kind))
    return done
