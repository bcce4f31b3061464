"""Train-time augmentation for bin photos, and the eval transform (which is serving's, exactly).

Counting constrains augmentation: every item must stay in the picture, so crops are mild (80-100%
of the area, a small aspect change) and there is no cutout or heavy zoom. Flips and small rotations
do not change a count; colour jitter covers lighting and camera differences between stations.

All randomness comes from torch's generator, so DataLoader worker seeding and checkpointed RNG
state make runs reproducible. Transforms are picklable objects (DataLoader workers may spawn).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from PIL import Image, ImageStat

from service.preprocess import PreprocessSpec, image_to_tensor, normalize, pil_to_tensor, resize_image, to_rgb

Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class AugmentParams:
    """Magnitudes of each augmentation; :func:`augment_params` derives them from one ``strength``."""

    crop_scale: tuple[float, float] = (0.8, 1.0)  # fraction of the image area kept
    max_aspect_change: float = 1.15  # crop aspect ratio within [1/x, x] of the photo's
    hflip: float = 0.5  # probabilities
    vflip: float = 0.5
    max_rotation: float = 10.0  # degrees, uniform in [-x, x]
    brightness: float = 0.25  # factors uniform in [1-x, 1+x]
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.03  # hue shift uniform in [-x, x] (of a full turn)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.max_aspect_change < 1:
            raise ValueError(f"max_aspect_change must be >= 1, got {self.max_aspect_change}")
        if not 0 <= self.max_rotation <= 10:
            raise ValueError(
                f"max_rotation must be within 0..10 degrees (items must stay in view), got {self.max_rotation}"
            )
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be within 0..0.5, got {self.hue}")


def augment_params(strength: float = 1.0) -> AugmentParams:
    """``strength`` 0 = no augmentation (eval preprocessing), 1 = the defaults, up to 2 = stronger."""
    if not 0 <= strength <= 2:
        raise ValueError(f"augmentation strength must be within 0..2, got {strength}")
    base = AugmentParams()
    if strength == 0:
        return AugmentParams(
            crop_scale=(1.0, 1.0),
            max_aspect_change=1.0,
            hflip=0.0,
            vflip=0.0,
            max_rotation=0.0,
            brightness=0.0,
            contrast=0.0,
            saturation=0.0,
            hue=0.0,
        )
    return replace(
        base,
        crop_scale=(max(0.6, 1 - (1 - base.crop_scale[0]) * strength), 1.0),
        max_aspect_change=1 + (base.max_aspect_change - 1) * strength,
        max_rotation=min(10.0, base.max_rotation * strength),
        brightness=base.brightness * strength,
        contrast=base.contrast * strength,
        saturation=base.saturation * strength,
        hue=min(0.5, base.hue * strength),
    )


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    if high <= low:
        return low
    return low + (high - low) * torch.rand((), generator=generator).item()


def _chance(p: float, generator: torch.Generator | None) -> bool:
    return p > 0 and torch.rand((), generator=generator).item() < p


def random_area_crop(
    image: Image.Image, scale: tuple[float, float], max_aspect_change: float, generator: torch.Generator | None = None
) -> Image.Image:
    """Crop keeping ``scale`` of the area with the aspect ratio changed by at most ``max_aspect_change``."""
    width, height = image.size
    area = _uniform(*scale, generator)
    log_r = math.log(max_aspect_change)
    ratio = math.exp(_uniform(-log_r, log_r, generator))
    w = min(width, max(1, round(width * math.sqrt(area * ratio))))
    h = min(height, max(1, round(height * math.sqrt(area / ratio))))
    if (w, h) == (width, height):
        return image
    left = round(_uniform(0, width - w, generator))
    top = round(_uniform(0, height - h, generator))
    return image.crop((left, top, left + w, top + h))


def _blend(image: torch.Tensor, other: torch.Tensor | float, factor: float) -> torch.Tensor:
    return (factor * image + (1 - factor) * other).clamp_(0, 255)


def _grey(image: torch.Tensor) -> torch.Tensor:
    r, g, b = image.unbind(0)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(0)


def _shift_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate hue by ``shift`` turns on a float RGB 0..255 tensor (YIQ rotation: cheap, no HSV round trip)."""
    angle = 2 * math.pi * shift
    cos, sin = math.cos(angle), math.sin(angle)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rotate = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = torch.linalg.inv(to_yiq) @ rotate @ to_yiq
    return torch.einsum("ij,jhw->ihw", matrix, image).clamp_(0, 255)


def color_jitter(image: torch.Tensor, params: AugmentParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter on a uint8 [3, H, W] tensor, in random order."""
    x = image.float()
    ops = []
    if params.brightness > 0:
        f = _uniform(1 - params.brightness, 1 + params.brightness, generator)
        ops.append(lambda t, f=f: _blend(t, 0.0, f))
    if params.contrast > 0:
        f = _uniform(1 - params.contrast, 1 + params.contrast, generator)
        ops.append(lambda t, f=f: _blend(t, _grey(t).mean(), f))
    if params.saturation > 0:
        f = _uniform(1 - params.saturation, 1 + params.saturation, generator)
        ops.append(lambda t, f=f: _blend(t, _grey(t), f))
    if params.hue > 0:
        s = _uniform(-params.hue, params.hue, generator)
        ops.append(lambda t, s=s: _shift_hue(t, s))
    for i in torch.randperm(len(ops), generator=generator).tolist():
        x = ops[i](x)
    return x.round_().to(torch.uint8)


class TrainTransform:
    """Upright RGB PIL image -> augmented, normalised tensor [3, size, size] (see module docstring).

    Order: crop (on the full photo, so resolution is not wasted), resize per the artifact's policy,
    flips, rotation (filled with the image's mean colour, so no black corners), colour jitter, normalise.
    """

    def __init__(
        self, spec: PreprocessSpec, params: AugmentParams | None = None, generator: torch.Generator | None = None
    ):
        self.spec = spec
        self.params = params or AugmentParams()
        self.generator = generator

    def __call__(self, image: Image.Image) -> torch.Tensor:
        p, g = self.params, self.generator
        image = to_rgb(image)
        image = random_area_crop(image, p.crop_scale, p.max_aspect_change, g)
        image = resize_image(image, self.spec.input_size, self.spec.resize)
        if _chance(p.hflip, g):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if _chance(p.vflip, g):
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        if p.max_rotation > 0:
            angle = _uniform(-p.max_rotation, p.max_rotation, g)
            fill = tuple(round(c) for c in ImageStat.Stat(image).mean)
            image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill)
        tensor = pil_to_tensor(image)
        if p.brightness or p.contrast or p.saturation or p.hue:
            tensor = color_jitter(tensor, p, g)
        return normalize(tensor, self.spec)

    def __repr__(self) -> str:
        return f"TrainTransform(spec={self.spec}, params={self.params})"


def train_transform(
    spec: PreprocessSpec, strength: float = 1.0, generator: torch.Generator | None = None, **overrides
) -> Transform:
    """Train-time transform; ``strength`` scales every augmentation (0 = eval), ``overrides`` set single ones."""
    params = replace(augment_params(strength), **overrides) if overrides else augment_params(strength)
    return TrainTransform(spec, params, generator)


def eval_transform(spec: PreprocessSpec) -> Transform:
    """Exactly serving's preprocessing (:func:`service.preprocess.image_to_tensor`), so eval == serving."""
    return functools.partial(image_to_tensor, spec=spec)
