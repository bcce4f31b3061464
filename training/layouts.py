"""Dataset layouts on disk -> :class:`BinRecord` (one photo and its count).

Two layouts are read:

* ABID (the dataset bucket's own): ``bin-images/<id>.jpg`` + ``metadata/<id>.json`` whose
  ``EXPECTED_QUANTITY`` is the count. Ids are strings: ``"00010"`` and ``"10"`` are different bins.
* Count folders (the course layout): folders named by count, ``train/1/*.jpg`` or ``1/*.jpg``;
  the id is the path relative to the root.

Everything that can be wrong with a file (missing metadata, a count that is not a count) is
skipped and counted in a :class:`ScanReport`, never fatal on its own. What comes next:
:mod:`training.labels` (counts -> classes), :mod:`training.splits`, :mod:`training.dataset`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.log import Log, print_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ABID_IMAGE_DIR = "bin-images"
ABID_METADATA_DIR = "metadata"


class DataError(ValueError):
    """The data cannot be used for training or evaluation; the message says why and where."""


@dataclass(frozen=True)
class BinRecord:
    """One bin photo and its expected item count (ABID's ``EXPECTED_QUANTITY``)."""

    id: str
    image_path: Path
    count: int


@dataclass
class ScanReport:
    """What reading a dataset directory found and skipped."""

    layout: str
    root: Path
    records: int = 0
    missing_metadata: int = 0  # image without metadata/<id>.json
    invalid_metadata: int = 0  # metadata that is not JSON or has no usable EXPECTED_QUANTITY
    missing_image: int = 0  # metadata/<id>.json without bin-images/<id>.jpg
    examples: list[str] = field(default_factory=list)  # a few "id: reason" lines for the log

    @property
    def skipped(self) -> int:
        return self.missing_metadata + self.invalid_metadata + self.missing_image

    def note(self, line: str, limit: int = 10) -> None:
        if len(self.examples) < limit:
            self.examples.append(line)

    def log_lines(self) -> list[str]:
        lines = [
            f"data_layout: {self.layout}",
            f"data_root: {self.root}",
            f"data_records: {self.records}",
            f"data_missing_metadata: {self.missing_metadata}",
            f"data_invalid_metadata: {self.invalid_metadata}",
            f"data_missing_image: {self.missing_image}",
        ]
        lines += [f"data_skipped_example: {example}" for example in self.examples]
        return lines

    def log(self, log: Log = print_line) -> None:
        for line in self.log_lines():
            log(line)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def parse_expected_quantity(raw: Any) -> int:
    """``EXPECTED_QUANTITY`` of an ABID metadata object as a non-negative int; ``ValueError`` otherwise."""
    if not isinstance(raw, dict):
        raise ValueError("metadata is not a JSON object")
    if "EXPECTED_QUANTITY" not in raw:
        raise ValueError("no EXPECTED_QUANTITY")
    value = raw["EXPECTED_QUANTITY"]
    if isinstance(value, bool):
        raise ValueError(f"EXPECTED_QUANTITY is a boolean ({value})")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise ValueError(f"EXPECTED_QUANTITY is not an integer ({value!r})")
    if value < 0:
        raise ValueError(f"EXPECTED_QUANTITY is negative ({value})")
    return value


def is_abid_root(root: Path) -> bool:
    return (root / ABID_IMAGE_DIR).is_dir() and (root / ABID_METADATA_DIR).is_dir()


def scan_abid(root: str | os.PathLike) -> tuple[list[BinRecord], ScanReport]:
    """Read the ABID layout; returns the usable records (sorted by id) and what was skipped."""
    root = Path(root)
    if not is_abid_root(root):
        raise DataError(f"{root} is not an ABID directory: it needs {ABID_IMAGE_DIR}/ and {ABID_METADATA_DIR}/")
    report = ScanReport(layout="abid", root=root)
    images: dict[str, Path] = {}
    for path in sorted((root / ABID_IMAGE_DIR).iterdir()):
        if _is_image(path):
            images.setdefault(path.stem, path)  # <id>.jpg before <id>.png when both exist
    metadata = {
        p.stem: p
        for p in (root / ABID_METADATA_DIR).iterdir()
        if p.is_file() and p.suffix.lower() == ".json" and not p.name.startswith(".")
    }
    records: list[BinRecord] = []
    for bin_id in sorted(set(images) | set(metadata)):
        image, meta = images.get(bin_id), metadata.get(bin_id)
        if image is None:
            report.missing_image += 1
            report.note(f"{bin_id}: metadata without image")
            continue
        if meta is None:
            report.missing_metadata += 1
            report.note(f"{bin_id}: image without metadata")
            continue
        try:
            count = parse_expected_quantity(json.loads(meta.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            report.invalid_metadata += 1
            report.note(f"{bin_id}: invalid metadata ({str(exc).splitlines()[0][:120]})")
            continue
        records.append(BinRecord(id=bin_id, image_path=image, count=count))
    report.records = len(records)
    return records, report


SHRUNK_COPIES_LIST = "resized_224.txt"


def shrunk_copy_ids(root: str | os.PathLike) -> set[str]:
    """Ids of the bins whose photo the ABID sample ships as a copy already shrunk to 224x224 (its
    ``resized_224.txt``); empty where the folder has no such list (the bucket's own layout, test data)."""
    listing = Path(root) / SHRUNK_COPIES_LIST
    return set(listing.read_text().split()) if listing.is_file() else set()


def read_abid(root: str | os.PathLike, log: Log | None = print_line) -> list[BinRecord]:
    """Records of an ABID directory; skipped files are counted and logged (see :func:`scan_abid`)."""
    records, report = scan_abid(root)
    if log is not None:
        report.log(log)
    return records


def _count_dirs(root: Path) -> list[Path]:
    """Folders named by a count directly under ``root`` or one level below (``train/1``)."""
    found = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if child.name.isdigit():
            found.append(child)
        else:
            found.extend(g for g in sorted(child.iterdir()) if g.is_dir() and g.name.isdigit())
    return found


def is_count_folders_root(root: Path) -> bool:
    return any(any(_is_image(p) for p in d.iterdir()) for d in _count_dirs(root))


def scan_count_folders(root: str | os.PathLike) -> tuple[list[BinRecord], ScanReport]:
    """Read the course layout (folders named by count); ids are posix paths relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist")
    report = ScanReport(layout="count_folders", root=root)
    records = []
    for folder in _count_dirs(root):
        count = int(folder.name)
        for path in sorted(folder.rglob("*")):
            if _is_image(path):
                records.append(BinRecord(id=path.relative_to(root).as_posix(), image_path=path, count=count))
    records.sort(key=lambda r: r.id)
    report.records = len(records)
    return records, report


def scan_records(root: str | os.PathLike) -> tuple[list[BinRecord], ScanReport]:
    """Detect the layout of ``root`` and read it; :class:`DataError` when it is empty or unrecognised."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a directory")
    if is_abid_root(root):
        records, report = scan_abid(root)
    elif is_count_folders_root(root):
        records, report = scan_count_folders(root)
    else:
        entries = sorted(p.name for p in root.iterdir())
        if not entries:
            raise DataError(f"data directory {root} is empty")
        shown = ", ".join(entries[:10]) + (", ..." if len(entries) > 10 else "")
        raise DataError(
            f"data directory {root} has no recognised layout (found: {shown}). Expected either ABID "
            f"({ABID_IMAGE_DIR}/<id>.jpg + {ABID_METADATA_DIR}/<id>.json) or folders named by count "
            "(train/1/*.jpg or 1/*.jpg)"
        )
    if not records:
        raise DataError(
            f"data directory {root} ({report.layout} layout) holds no usable images: "
            f"{report.skipped} skipped ({'; '.join(report.examples[:3]) or 'no images found'})"
        )
    return records, report
