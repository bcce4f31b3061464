"""Training data: dataset layouts -> records -> labels -> split -> ``Dataset``.

Two layouts are read:

* ABID (the dataset bucket's own): ``bin-images/<id>.jpg`` + ``metadata/<id>.json`` whose
  ``EXPECTED_QUANTITY`` is the label. Ids are strings: ``"00010"`` and ``"10"`` are different bins.
* Count folders (the course layout): folders named by count, ``train/1/*.jpg`` or ``1/*.jpg``;
  the id is the path relative to the root.

Everything that can be wrong with a file (missing metadata, a label that is not a count, an
unreadable image) is skipped and counted, never fatal on its own; :func:`check_images` fails the
run when too large a share of the images is bad.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence, TypeVar

import torch
from PIL import Image
from torch.utils.data import Dataset, WeightedRandomSampler

from service.artifact import count_labels
from service.preprocess import ImageDecodeError, decode_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ABID_IMAGE_DIR = "bin-images"
ABID_METADATA_DIR = "metadata"
MANIFEST_FORMAT = 1
#: File name of the split manifest written next to a model (model dir) by training.
SPLIT_MANIFEST_FILE = "split.json"
SPLIT_PARTS = ("train", "val", "test")

Log = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


class DataError(ValueError):
    """The data cannot be used for training or evaluation; the message says why and where."""


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------

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
    missing_metadata: int = 0   # image without metadata/<id>.json
    invalid_metadata: int = 0   # metadata that is not JSON or has no usable EXPECTED_QUANTITY
    missing_image: int = 0      # metadata/<id>.json without bin-images/<id>.jpg
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

    def log(self, log: Log = _print) -> None:
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
    metadata = {p.stem: p for p in (root / ABID_METADATA_DIR).iterdir()
                if p.is_file() and p.suffix.lower() == ".json" and not p.name.startswith(".")}
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


def read_abid(root: str | os.PathLike, log: Log | None = _print) -> list[BinRecord]:
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


def read_count_folders(root: str | os.PathLike, log: Log | None = _print) -> list[BinRecord]:
    """Records of a course-layout directory (``train/1/*.jpg`` or ``1/*.jpg``)."""
    records, report = scan_count_folders(root)
    if log is not None:
        report.log(log)
    return records


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


def discover_records(root: str | os.PathLike, log: Log | None = _print) -> list[BinRecord]:
    """Records of ``root`` in whichever layout it has (see :func:`scan_records`)."""
    records, report = scan_records(root)
    if log is not None:
        report.log(log)
    return records


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------

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


def class_weights(counts: Sequence[int], power: float = 1.0) -> torch.Tensor:
    """Inverse-frequency class weights ``(N / (K * n_c)) ** power``, normalised so sum(n_c * w_c) = N.

    With the normalisation the average loss keeps its scale. Classes absent from the data get
    weight 1 (they never occur as a target, so the value only matters for label smoothing).
    """
    n = torch.tensor([float(c) for c in counts])
    present = n > 0
    if not bool(present.any()):
        raise ValueError("class_weights needs at least one non-empty class")
    weights = torch.ones_like(n)
    weights[present] = (n[present].sum() / (int(present.sum()) * n[present])) ** power
    weights[present] *= n[present].sum() / (n[present] * weights[present]).sum()
    return weights


def balanced_sampler(items: Sequence[LabelledBin], num_classes: int, num_samples: int | None = None,
                     generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """Sampler that draws every present class equally often (with replacement)."""
    counts = class_counts(items, num_classes)
    weights = [1.0 / counts[item.label] for item in items]
    return WeightedRandomSampler(weights, num_samples=num_samples or len(items), replacement=True,
                                 generator=generator)


# --------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------

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


def stratified_split(items: Sequence[LabelledBin], val_fraction: float = 0.1, test_fraction: float = 0.1,
                     seed: int = 0) -> Split:
    """Reproducible stratified split: the same ids, fractions and seed always give the same parts.

    Each class is sorted by id and shuffled with its own seeded generator, so the result does not
    depend on the input order, and adding a class does not reshuffle the others. A class with at
    least 3 items has at least one in each of val and test (when their fraction is non-zero).
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
                         "and leave something for training")
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
        val.extend(members[n_test:n_test + n_val])
        train.extend(members[n_test + n_val:])
    key = lambda item: item.id  # noqa: E731
    return Split(train=sorted(train, key=key), val=sorted(val, key=key), test=sorted(test, key=key),
                 seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1)
            fh.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from a non-root server reading the model folder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
            isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in parts.values()):
        raise DataError(f"split manifest {path} needs 'parts': an object of lists of string ids")
    return SplitManifest(parts=parts, seed=raw.get("seed"), class_counts=raw.get("class_counts") or {},
                         extra=raw.get("extra") or {})


def select_ids(items: Sequence[T], ids: Sequence[str], strict: bool = True) -> tuple[list[T], list[str]]:
    """The items whose id is in ``ids`` (in the order of ``ids``) and the ids that were not found.

    With ``strict`` a missing id is a :class:`DataError` (the data dir is not the one the split was made on).
    """
    by_id = {item.id: item for item in items}
    found = [by_id[i] for i in ids if i in by_id]
    missing = [i for i in ids if i not in by_id]
    if missing and strict:
        raise DataError(f"{len(missing)} of {len(ids)} ids of the split manifest are not in the data "
                        f"(e.g. {', '.join(missing[:3])}); is it the data the model was trained on?")
    return found, missing


def apply_split_manifest(items: Sequence[LabelledBin], manifest: SplitManifest, strict: bool = True) -> Split:
    """Rebuild a :class:`Split` from a manifest and freshly labelled items."""
    parts = {name: select_ids(items, manifest.parts.get(name, []), strict=strict)[0] for name in SPLIT_PARTS}
    return Split(**parts, seed=manifest.seed)


# --------------------------------------------------------------------------------------------
# Image checks and the Dataset
# --------------------------------------------------------------------------------------------

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


def check_images(items: Sequence[T], max_bad_fraction: float = 0.01, log: Log | None = _print,
                 full_decode: bool = False, log_limit: int = 20) -> tuple[list[T], list[tuple[str, str]]]:
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
