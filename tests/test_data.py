"""training.layouts, labels, splits, dataset: layouts, labels, split + manifest, image checks, Dataset."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from training.dataset import BadSample, BinDataset, check_images, collate_skip_bad
from training.labels import LabelledBin, LabelPolicy, apply_label_policy, class_counts
from training.layouts import BinRecord, DataError, read_abid, scan_abid, scan_count_folders, scan_records
from training.loaders import sampling_weights
from training.losses import class_weights
from training.splits import read_split_manifest, select_ids, stratified_split, write_split_manifest
from training.synthetic import corrupt_some, make_synthetic_abid, make_synthetic_folders


def _jpeg(path: Path, colour=(120, 110, 100), size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


def _abid_bin(root: Path, bin_id: str, metadata) -> None:
    _jpeg(root / "bin-images" / f"{bin_id}.jpg")
    meta = root / "metadata" / f"{bin_id}.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(metadata if isinstance(metadata, str) else json.dumps(metadata))


def _items(labels: list[int], prefix: str = "b") -> list[LabelledBin]:
    return [LabelledBin(BinRecord(f"{prefix}{i:04d}", Path(f"/nowhere/{i}.jpg"), c), c) for i, c in enumerate(labels)]


# ---------------------------------------------------------------------------- layouts


def test_abid_ids_are_strings_and_skips_are_counted(tmp_path: Path) -> None:
    _abid_bin(tmp_path, "00010", {"EXPECTED_QUANTITY": 3, "BIN_FCSKU_DATA": {}})
    _abid_bin(tmp_path, "10", {"EXPECTED_QUANTITY": 7})
    _abid_bin(tmp_path, "00011", {"EXPECTED_QUANTITY": "2"})
    _abid_bin(tmp_path, "bad_json", "{not json")
    _abid_bin(tmp_path, "no_qty", {"BIN_FCSKU_DATA": {}})
    _abid_bin(tmp_path, "neg", {"EXPECTED_QUANTITY": -1})
    _abid_bin(tmp_path, "float", {"EXPECTED_QUANTITY": 2.5})
    _abid_bin(tmp_path, "boolean", {"EXPECTED_QUANTITY": True})
    _jpeg(tmp_path / "bin-images" / "orphan.jpg")  # image without metadata
    (tmp_path / "metadata" / "lonely.json").write_text('{"EXPECTED_QUANTITY": 1}')  # metadata without image
    (tmp_path / "bin-images" / "notes.txt").write_text("ignored")

    records, report = scan_abid(tmp_path)
    assert [(r.id, r.count) for r in records] == [("00010", 3), ("00011", 2), ("10", 7)]
    assert all(isinstance(r.id, str) for r in records)
    assert records[0].image_path == tmp_path / "bin-images" / "00010.jpg"
    assert (report.records, report.invalid_metadata, report.missing_metadata, report.missing_image) == (3, 5, 1, 1)
    assert report.skipped == 7

    lines: list[str] = []
    assert read_abid(tmp_path, log=lines.append) == records
    assert "data_invalid_metadata: 5" in lines and "data_missing_image: 1" in lines
    assert any(line.startswith("data_skipped_example: bad_json: invalid metadata") for line in lines)


@pytest.mark.parametrize("subdir", ["train", None])
def test_count_folders_layout(tmp_path: Path, subdir) -> None:
    base = tmp_path / subdir if subdir else tmp_path
    _jpeg(base / "0" / "a.jpg")
    _jpeg(base / "3" / "b.JPEG")
    _jpeg(base / "3" / "c.png")
    (base / "3" / "readme.txt").write_text("not an image")
    (base / "misc").mkdir()
    records, report = scan_count_folders(tmp_path)
    prefix = f"{subdir}/" if subdir else ""
    assert [(r.id, r.count) for r in records] == [
        (f"{prefix}0/a.jpg", 0),
        (f"{prefix}3/b.JPEG", 3),
        (f"{prefix}3/c.png", 3),
    ]
    assert report.layout == "count_folders" and scan_records(tmp_path)[0] == records


def test_discover_detects_both_layouts(tmp_path: Path) -> None:
    make_synthetic_abid(tmp_path / "abid", 6, size=48)
    make_synthetic_folders(tmp_path / "course", 6, size=48)
    _, abid_report = scan_records(tmp_path / "abid")
    _, course_report = scan_records(tmp_path / "course")
    assert (abid_report.layout, abid_report.records) == ("abid", 6)
    assert (course_report.layout, course_report.records) == ("count_folders", 6)


def test_discover_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_records(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        scan_records(tmp_path / "empty")
    (tmp_path / "odd" / "cats").mkdir(parents=True)
    (tmp_path / "odd" / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match=r"no recognised layout \(found: cats, x.csv\)"):
        scan_records(tmp_path / "odd")
    (tmp_path / "abid_no_images" / "bin-images").mkdir(parents=True)
    (tmp_path / "abid_no_images" / "metadata").mkdir()
    (tmp_path / "abid_no_images" / "metadata" / "1.json").write_text('{"EXPECTED_QUANTITY": 1}')
    with pytest.raises(DataError, match="no usable images: 1 skipped"):
        scan_records(tmp_path / "abid_no_images")


# ---------------------------------------------------------------------------- labels


def test_label_policy_drop_and_overflow() -> None:
    records = [BinRecord(str(i), Path(f"{i}.jpg"), c) for i, c in enumerate([0, 1, 5, 6, 9, 2])]
    drop = LabelPolicy(max_count=5)
    assert drop.labels == ["0", "1", "2", "3", "4", "5"] and drop.num_classes == 6
    items, dropped = apply_label_policy(records, drop)
    assert [i.label for i in items] == [0, 1, 5, 2] and dropped == 2

    over = LabelPolicy(max_count=5, overflow=True)
    assert over.labels[-1] == "6+" and over.num_classes == 7
    items, dropped = apply_label_policy(records, over)
    assert [i.label for i in items] == [0, 1, 5, 6, 6, 2] and dropped == 0
    assert over.class_of(100) == 6 and drop.class_of(100) is None
    with pytest.raises(ValueError):
        LabelPolicy(max_count=0)


def test_synthetic_overflow_counts_dropped(tmp_path: Path) -> None:
    records = make_synthetic_abid(tmp_path, 16, max_count=3, size=48, overflow_extra=1)  # counts 0..4, balanced
    _, dropped = apply_label_policy(records, LabelPolicy(max_count=3))
    assert dropped == sum(r.count > 3 for r in records) == 3


def test_class_counts_weights_and_sampler() -> None:
    items = _items([0] * 6 + [1] * 3 + [2] * 1)
    counts = class_counts(items, 4)
    assert counts == [6, 3, 1, 0]
    w = class_weights(counts)
    # inverse frequency N/(K n_c) with K=3 present classes: 10/18, 10/9, 10/3; absent class -> 1
    assert torch.allclose(w, torch.tensor([10 / 18, 10 / 9, 10 / 3, 1.0]))
    assert float((torch.tensor(counts[:3], dtype=torch.float) * w[:3]).sum()) == pytest.approx(10.0)
    sqrt_w = class_weights(counts, power=0.5)
    assert float((torch.tensor(counts[:3], dtype=torch.float) * sqrt_w[:3]).sum()) == pytest.approx(10.0)
    assert sqrt_w[2] / sqrt_w[0] == pytest.approx(6**0.5)
    with pytest.raises(ValueError):
        class_counts(items, 2)

    weights = sampling_weights(items, 4)
    draws = torch.multinomial(weights, 3000, replacement=True, generator=torch.Generator().manual_seed(0))
    drawn = Counter(items[i].label for i in draws.tolist())
    assert set(drawn) == {0, 1, 2}
    assert all(900 < n < 1100 for n in drawn.values()), drawn


# ---------------------------------------------------------------------------- split


def test_split_is_reproducible_and_stratified() -> None:
    labels = [0] * 3 + [1] * 10 + [2] * 40 + [3] * 2 + [4] * 1
    items = _items(labels)
    split = stratified_split(items, val_fraction=0.1, test_fraction=0.2, seed=7)
    ids = lambda part: [i.id for i in part]  # noqa: E731
    all_ids = ids(split.train) + ids(split.val) + ids(split.test)
    assert sorted(all_ids) == sorted(i.id for i in items) and len(set(all_ids)) == len(items)
    # every class with >= 3 items is in every part; tiny classes stay in train
    for label, n in Counter(labels).items():
        in_parts = [sum(i.label == label for i in part) for part in (split.train, split.val, split.test)]
        if n >= 3:
            assert all(in_parts), (label, in_parts)
        else:
            assert in_parts == [n, 0, 0]
    assert sum(i.label == 2 for i in split.test) == 8 and sum(i.label == 2 for i in split.val) == 4

    again = stratified_split(list(reversed(items)), val_fraction=0.1, test_fraction=0.2, seed=7)
    assert (ids(again.train), ids(again.val), ids(again.test)) == (ids(split.train), ids(split.val), ids(split.test))
    other = stratified_split(items, val_fraction=0.1, test_fraction=0.2, seed=8)
    assert ids(other.test) != ids(split.test)


def test_split_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        stratified_split(_items([0, 1]), val_fraction=0.6, test_fraction=0.5)
    dup = _items([0, 1]) + _items([2])
    with pytest.raises(DataError, match="more than once"):
        stratified_split(dup)


def test_manifest_round_trip_and_reapply(tmp_path: Path) -> None:
    items = _items([i % 4 for i in range(40)])
    split = stratified_split(items, 0.25, 0.25, seed=3)
    path = write_split_manifest(tmp_path / "model" / "split.json", split, extra={"labels": ["0", "1", "2", "3"]})
    raw = json.loads(path.read_text())
    assert raw["seed"] == 3 and raw["sizes"] == split.sizes()
    assert raw["class_counts"]["test"] == {"0": 2, "1": 2, "2": 2, "3": 2}
    assert raw["extra"] == {"labels": ["0", "1", "2", "3"]}

    manifest = read_split_manifest(path)
    assert manifest.seed == 3 and manifest.ids("test") == [i.id for i in split.test]
    for part in ("train", "val", "test"):  # the ids come back in the manifest's order, whatever the data's
        found, missing = select_ids(list(reversed(items)), manifest.ids(part))
        assert [i.id for i in found] == [i.id for i in split.part(part)] and not missing

    with pytest.raises(DataError, match="not in the data"):
        select_ids(items[:10], manifest.ids("test"))
    found, missing = select_ids(items[:10], manifest.ids("test"), strict=False)
    assert len(found) + len(missing) == len(split.test) and missing
    with pytest.raises(DataError, match="no part 'holdout'"):
        manifest.ids("holdout")

    (tmp_path / "bad.json").write_text('{"parts": {"test": [1, 2]}}')
    with pytest.raises(DataError, match="string ids"):
        read_split_manifest(tmp_path / "bad.json")
    with pytest.raises(DataError, match="does not exist"):
        read_split_manifest(tmp_path / "nope.json")


# ---------------------------------------------------------------------------- images and Dataset


def test_check_images_counts_bad_and_enforces_threshold(tmp_path: Path) -> None:
    records = make_synthetic_abid(tmp_path, 20, size=48, seed=1)
    items, _ = apply_label_policy(records, LabelPolicy())
    damaged = corrupt_some(tmp_path, 3, seed=0, kinds=("text", "empty", "truncated"))
    lines: list[str] = []
    good, bad = check_images(items, max_bad_fraction=0.2, log=lines.append, full_decode=True)
    assert len(good) == 17 and len(bad) == 3
    assert {i for i, _ in bad} == {p.stem for p, _ in damaged}
    assert "images_checked: 20 images_bad: 3" in lines
    assert sum(line.startswith("bad_image: ") for line in lines) == 3

    cheap_good, cheap_bad = check_images(items, max_bad_fraction=0.2, log=None)
    assert {p.stem for p, k in damaged if k in ("text", "empty")} <= {i for i, _ in cheap_bad}

    with pytest.raises(DataError, match=r"3 of 20 images \(15.0%\) are unreadable, above the limit of 1.0%"):
        check_images(items, max_bad_fraction=0.01, log=None, full_decode=True)


def test_dataset_skips_unreadable_files_without_failing_the_epoch(tmp_path: Path) -> None:
    records = make_synthetic_abid(tmp_path, 12, size=48, seed=2)
    items, _ = apply_label_policy(records, LabelPolicy())
    damaged = corrupt_some(tmp_path, 2, seed=1, kinds=("truncated", "text"))

    def transform(image: Image.Image) -> torch.Tensor:
        assert image.mode == "RGB"
        return torch.zeros(3, 8, 8) + image.size[0]

    dataset = BinDataset(items, transform)
    x, y = dataset[0]
    assert x.shape == (3, 8, 8) and y == items[0].label
    loader = DataLoader(dataset, batch_size=5, collate_fn=collate_skip_bad)
    seen, skipped = 0, []
    for images, labels, bad in loader:
        assert images.shape[0] == labels.shape[0] and labels.dtype == torch.long
        seen += labels.numel()
        skipped += bad
    assert seen == 10 and sorted(b.id for b in skipped) == sorted(p.stem for p, _ in damaged)
    assert all(isinstance(b, BadSample) and b.reason for b in skipped)

    empty = collate_skip_bad([(BadSample("x", "broken"), 1)])
    assert empty.labels.numel() == 0 and empty.images.numel() == 0 and empty.skipped[0].id == "x"


def test_dataset_applies_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "rot.jpg"
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(path, "JPEG", exif=exif)
    item = LabelledBin(BinRecord("rot", path, 1), 1)
    x, _ = BinDataset([item], lambda im: torch.tensor(im.size))[0]
    assert x.tolist() == [20, 40]


def test_shrunk_copy_ids_reads_the_samples_list_and_is_empty_without_one(tmp_path):
    from training.layouts import SHRUNK_COPIES_LIST, shrunk_copy_ids

    assert shrunk_copy_ids(tmp_path) == set()
    (tmp_path / SHRUNK_COPIES_LIST).write_text("00010\n10\n01000\n")
    assert shrunk_copy_ids(tmp_path) == {"00010", "10", "01000"}
