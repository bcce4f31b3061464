"""training.synthetic: ABID-format output, visible counts, determinism, corruption helpers, learnability."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from service.preprocess import ImageDecodeError, PreprocessSpec, decode_image, image_to_tensor
from training.dataset import BinDataset, check_image, collate_skip_bad
from training.labels import LabelPolicy, apply_label_policy
from training.layouts import read_abid, scan_count_folders
from training.splits import stratified_split
from training.synthetic import corrupt_some, make_synthetic_abid, make_synthetic_folders


def _saturated_blobs(image: Image.Image, threshold: int = 150, min_area: int = 12) -> int:
    """Connected regions of strongly saturated pixels: the drawn objects (the background is muted)."""
    hsv = image.convert("HSV")
    width, height = hsv.size
    mask = [v > threshold for v in hsv.getchannel("S").tobytes()]
    seen = [False] * len(mask)
    blobs = 0
    for start, on in enumerate(mask):
        if not on or seen[start]:
            continue
        seen[start], stack, area = True, [start], 0
        while stack:
            j = stack.pop()
            area += 1
            x = j % width
            for k in (j - 1 if x > 0 else -1, j + 1 if x < width - 1 else -1, j - width, j + width):
                if 0 <= k < width * height and mask[k] and not seen[k]:
                    seen[k] = True
                    stack.append(k)
        blobs += area >= min_area
    return blobs


def test_abid_format_and_balanced_counts(tmp_path: Path) -> None:
    records = make_synthetic_abid(tmp_path, 21, max_count=5, size=64, seed=4, overflow_extra=1)
    assert [r.id for r in records] == [f"{i:05d}" for i in range(1, 22)]
    assert Counter(r.count for r in records) == {c: 3 for c in range(7)}
    for record in records:
        meta = json.loads((tmp_path / "metadata" / f"{record.id}.json").read_text())
        assert meta["EXPECTED_QUANTITY"] == record.count
        products = meta["BIN_FCSKU_DATA"]
        assert sum(p["quantity"] for p in products.values()) == record.count
        assert all(p["name"] and p["asin"] == asin and p["quantity"] >= 1 for asin, p in products.items())
        image = decode_image(record.image_path.read_bytes())
        assert image.width == 64 and 48 <= image.height <= 64
    assert read_abid(tmp_path, log=None) == records


def test_counts_are_visually_obvious(tmp_path: Path) -> None:
    """The drawn objects can be counted by connected components, so the label is in the pixels."""
    records = make_synthetic_abid(tmp_path, 60, max_count=5, size=96, seed=3)
    exact = sum(_saturated_blobs(Image.open(r.image_path).convert("RGB")) == r.count for r in records)
    assert exact >= 57, f"only {exact}/60 bins show exactly their count"


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = make_synthetic_abid(tmp_path / "a", 5, size=48, seed=9)
    b = make_synthetic_abid(tmp_path / "b", 5, size=48, seed=9)
    c = make_synthetic_abid(tmp_path / "c", 5, size=48, seed=10)
    assert [ra.image_path.read_bytes() for ra in a] == [rb.image_path.read_bytes() for rb in b]
    assert [ra.image_path.read_bytes() for ra in a] != [rc.image_path.read_bytes() for rc in c]


def test_folders_layout(tmp_path: Path) -> None:
    records = make_synthetic_folders(tmp_path, 8, max_count=3, size=48, seed=1)
    assert all(r.id == f"train/{r.count}/{r.image_path.name}" for r in records)
    assert sorted(scan_count_folders(tmp_path)[0], key=lambda r: r.id) == sorted(records, key=lambda r: r.id)
    flat = make_synthetic_folders(tmp_path / "flat", 4, size=48, subdir=None)
    assert all(r.id.split("/")[0] == str(r.count) for r in flat)


def test_corrupt_some(tmp_path: Path) -> None:
    make_synthetic_abid(tmp_path, 6, size=48)
    damaged = corrupt_some(tmp_path, 3, kinds=("truncated", "text", "empty"))
    assert sorted(kind for _, kind in damaged) == ["empty", "text", "truncated"]
    for path, kind in damaged:
        with pytest.raises(ImageDecodeError):
            decode_image(path.read_bytes())
        assert check_image(path, full_decode=True) is not None
        if kind != "truncated":
            assert check_image(path) is not None
    with pytest.raises(ValueError, match="only 6"):
        corrupt_some(tmp_path, 7)


@pytest.mark.slow
def test_a_tiny_cnn_learns_the_counts_quickly(tmp_path: Path) -> None:
    """Far above chance (1/6) within seconds on CPU at 48 px: the data is learnable."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        records = make_synthetic_abid(tmp_path, 360, max_count=5, size=64, seed=0)
        items, _ = apply_label_policy(records, LabelPolicy(max_count=5))
        split = stratified_split(items, val_fraction=0.0, test_fraction=1 / 3, seed=0)
        spec = PreprocessSpec(input_size=48, mean=(0.5,) * 3, std=(0.25,) * 3)

        def tensors(part):
            dataset = BinDataset(part, lambda image: image_to_tensor(image, spec))
            batch = collate_skip_bad([dataset[i] for i in range(len(dataset))])
            return batch.images, batch.labels

        x_train, y_train = tensors(split.train)
        x_test, y_test = tensors(split.test)
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 6),
        )
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
        start, accuracy, off_by_one = time.monotonic(), 0.0, 0.0
        for _ in range(12):
            model.train()
            order = torch.randperm(len(y_train))
            for i in range(0, len(order), 24):
                idx = order[i : i + 24]
                loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            model.eval()
            with torch.no_grad():
                predicted = model(x_test).argmax(1)
            accuracy = (predicted == y_test).float().mean().item()
            off_by_one = ((predicted - y_test).abs() <= 1).float().mean().item()
            if (accuracy >= 0.55 and off_by_one >= 0.9) or time.monotonic() - start > 45:
                break
        assert accuracy >= 0.45 and off_by_one >= 0.85, (accuracy, off_by_one)
    finally:
        torch.set_num_threads(threads)
