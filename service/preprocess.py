"""Image bytes -> normalised tensor, the one eval-time path shared by training's evaluation and serving.

Only PIL and torch: no torchvision and no numpy, so the serving image stays small.
Every way an upload can be wrong ends in :class:`ImageDecodeError` with a message naming the
problem, never in an unhandled PIL exception.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from service.image_formats import PHOTO_HINT, readable_formats
from service.model_metadata import ResizePolicy

#: Largest image accepted, in pixels (about 8k x 5k). ABID photos are under 1.5 megapixels;
#: anything far larger is a mistake or a decompression bomb.
DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an image we can read: empty, not an image, truncated, too large."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How an artifact expects its input: recorded in model.json, applied identically everywhere."""

    input_size: int = 224
    resize: ResizePolicy = "squash"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes to an upright RGB PIL image.

    Applies the EXIF orientation, converts any mode (CMYK, L, P, LA, RGBA, I;16, I, F, 1) to
    RGB, compositing transparency onto white, and rejects empty, truncated or oversized images.
    """
    if not data:
        raise ImageDecodeError(f"empty body: expected the bytes of {PHOTO_HINT}")
    try:
        with warnings.catch_warnings():
            # PIL warns (DecompressionBombWarning) between 1x and 2x its own limit; we check ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=readable_formats())
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError(f"image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} "
                    "(a decompression bomb or a far too large photo)"
                )
            image.load()  # decodes fully: truncated data fails here, not later
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a recognised image format ({len(data)} bytes starting {data[:8]!r}); send {PHOTO_HINT}"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"image data is corrupt or truncated: {exc}") from None
    return to_rgb(_exif_upright(image))


def _exif_upright(image: Image.Image) -> Image.Image:
    # In place: the copying form copies every photo, even the (usual) ones without a rotation.
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # broken EXIF must not lose the photo: keep it as stored
        pass
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. High-bit-depth images are scaled, not clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):
        image = image.convert("I")
        mode = "I"
    if mode == "I":
        # 16-bit data stored in 32-bit ints: scale 0..65535 to 0..255 rather than clip at 255.
        image = image.point(lambda v: v * (1.0 / 256.0)).convert("L")
        mode = "L"
    elif mode == "F":
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
        mode = "L"
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_image(image: Image.Image, size: int, policy: ResizePolicy) -> Image.Image:
    """Resize to ``size`` x ``size``.

    ``squash`` (default) keeps every item in the bin at the cost of aspect ratio, which matters
    more for counting than shape does; ``letterbox`` pads with grey; ``center_crop`` crops the
    shorter side (may cut items at the bin's edges).
    """
    if policy == "squash":
        return image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    width, height = image.size
    if policy == "letterbox":
        scale = size / max(width, height)
        new = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = image.resize(new, Image.Resampling.BILINEAR, reducing_gap=3.0)
        canvas = Image.new("RGB", (size, size), (124, 116, 104))
        canvas.paste(resized, ((size - new[0]) // 2, (size - new[1]) // 2))
        return canvas
    if policy == "center_crop":
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        resized = image.resize(new, Image.Resampling.BILINEAR, reducing_gap=3.0)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        return resized.crop((left, top, left + size, top + size))
    raise ValueError(f"unknown resize policy {policy!r}; expected squash, letterbox or center_crop")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W] without numpy."""
    if image.mode != "RGB":
        image = to_rgb(image)
    width, height = image.size
    flat = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return flat.view(height, width, 3).permute(2, 0, 1).contiguous()


def normalize(batch_uint8: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 normalised with the spec's mean/std."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1) * 255.0
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1) * 255.0
    return (batch_uint8.float() - mean) / std


def image_to_tensor(image: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """Upright RGB image -> normalised float tensor [3, size, size]."""
    return normalize(pil_to_tensor(resize_image(to_rgb(image), spec.input_size, spec.resize)), spec)


def preprocess_bytes(data: bytes, spec: PreprocessSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Image bytes -> normalised float tensor [3, size, size]; raises :class:`ImageDecodeError`."""
    return image_to_tensor(decode_image(data, max_pixels=max_pixels), spec)
