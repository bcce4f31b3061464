"""training.augment: eval == serving, train transforms are mild, random and reproducible."""

from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image

from service.preprocess import PreprocessSpec, image_to_tensor
from training.augment import (
    AugmentParams,
    _shift_hue,
    augment_params,
    color_jitter,
    eval_transform,
    random_area_crop,
    train_transform,
)

SPEC = PreprocessSpec(input_size=40, resize="letterbox", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def _photo() -> Image.Image:
    image = Image.new("RGB", (90, 60), (120, 100, 80))
    image.paste((250, 20, 20), (5, 5, 30, 25))
    image.paste((20, 20, 250), (60, 35, 85, 55))
    return image


def test_eval_transform_is_serving_preprocessing() -> None:
    image = _photo()
    assert torch.equal(eval_transform(SPEC)(image), image_to_tensor(image, SPEC))
    assert torch.equal(eval_transform(SPEC)(image.convert("L")), image_to_tensor(image.convert("L"), SPEC))
    pickle.loads(pickle.dumps(eval_transform(SPEC)))  # DataLoader workers may spawn


def test_strength_zero_is_eval() -> None:
    image = _photo()
    assert torch.equal(train_transform(SPEC, strength=0)(image), image_to_tensor(image, SPEC))


def test_train_transform_is_random_reproducible_and_picklable() -> None:
    image = _photo()
    transform = train_transform(SPEC, strength=1.0)
    torch.manual_seed(1)
    first = [transform(image) for _ in range(4)]
    torch.manual_seed(1)
    second = [pickle.loads(pickle.dumps(transform))(image) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(t.shape == (3, 40, 40) and t.dtype == torch.float32 for t in first)
    assert not torch.equal(first[0], first[1])
    seeded = train_transform(SPEC, generator=torch.Generator().manual_seed(5))
    again = train_transform(SPEC, generator=torch.Generator().manual_seed(5))
    assert torch.equal(seeded(image), again(image))


def test_flips_only_move_pixels() -> None:
    image = _photo()
    transform = train_transform(SPEC, strength=0, hflip=1.0, vflip=1.0)
    expected = torch.flip(image_to_tensor(image, SPEC), dims=(1, 2))  # flips come after the resize
    assert torch.allclose(transform(image), expected, atol=1e-5)


def test_crop_keeps_most_of_the_photo() -> None:
    image = _photo()
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        crop = random_area_crop(image, (0.8, 1.0), 1.15, generator)
        area = crop.width * crop.height / (image.width * image.height)
        assert 0.7 <= area <= 1.0  # 0.8 of the area, less a little where the aspect change hits a side
        assert crop.width <= image.width and crop.height <= image.height


def test_color_jitter_bounds_and_identity() -> None:
    x = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    none = AugmentParams(brightness=0, contrast=0, saturation=0, hue=0)
    assert torch.equal(color_jitter(x, none), x)
    out = color_jitter(x, augment_params(2.0), torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape and not torch.equal(out, x)
    grey = torch.full((3, 4, 4), 128.0)
    assert torch.allclose(_shift_hue(grey, 0.2), grey, atol=1e-3)  # hue rotation leaves greys alone
    assert torch.allclose(_shift_hue(x.float(), 0.0), x.float(), atol=1e-3)
    assert torch.allclose(_shift_hue(x.float(), 1.0), x.float(), atol=1e-2)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="max_rotation"):
        AugmentParams(max_rotation=30)
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentParams(crop_scale=(0.2, 1.5))
    with pytest.raises(ValueError, match="strength"):
        augment_params(3)
    assert augment_params(1.0) == AugmentParams()
    assert augment_params(2.0).max_rotation == 10.0 and augment_params(2.0).crop_scale == pytest.approx((0.6, 1.0))
