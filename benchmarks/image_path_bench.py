"""Decode + resize per photo: the serving/evaluation path vs alternatives, on ABID photos.

    .venv/bin/python benchmarks/image_path_bench.py [--data-dir ../shared/abid] [--images 200]

For the 224 px copies and the full-size photos of the ABID sample (``resized_224.txt`` lists the
copies) it prints CPU milliseconds per photo (best of ``--repeats``) of:

* ``served``: :meth:`service.predictor.Predictor.prepare`'s steps (decode_image + resize_image +
  tobytes), the one path evaluation shares,
* ``exif_copy``: the same with Pillow's copying ``exif_transpose`` (the path before it ran in place),
* ``draft`` / ``reducing_gap_1``: JPEG decoding at reduced scale, and box-reducing before the
  bilinear resize, with how far their pixels are from the served ones (mean and max absolute
  difference on 0..255, share of photos changed): cheaper, but the model would see other pixels.

A figure, not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

from service.preprocess import decode_image, resize_image, to_rgb
from training.layouts import shrunk_copy_ids

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224


def served(data: bytes) -> bytes:
    return resize_image(decode_image(data), SIZE, "squash").tobytes()


def exif_copy(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.load()
    return (
        to_rgb(ImageOps.exif_transpose(image))
        .resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=3.0)
        .tobytes()
    )


def draft(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (SIZE, SIZE))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    return to_rgb(image).resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=3.0).tobytes()


def reducing_gap_1(data: bytes) -> bytes:
    return decode_image(data).resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=1.0).tobytes()


def cpu_ms(fn: Callable[[bytes], bytes], photos: list[bytes], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for data in photos:
            fn(data)
        best = min(best, (time.process_time() - start) / len(photos) * 1000)
    return best


def pixel_change(fn: Callable[[bytes], bytes], photos: list[bytes]) -> str:
    total, worst, changed = 0.0, 0, 0
    for data in photos:
        a, b = served(data), fn(data)
        diffs = [abs(x - y) for x, y in zip(a, b)]
        total += sum(diffs) / len(diffs)
        worst = max(worst, max(diffs))
        changed += any(diffs)
    return f"mean_abs_diff: {total / len(photos):.2f} max_abs_diff: {worst} changed_share: {changed / len(photos):.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "abid")
    parser.add_argument("--images", type=int, default=200, help="photos of each kind")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    shrunk = shrunk_copy_ids(args.data_dir)
    paths = sorted((args.data_dir / "bin-images").glob("*.jpg"))
    kinds = {
        "copies_224px": [p for p in paths if p.stem in shrunk][: args.images],
        "full_size": [p for p in paths if p.stem not in shrunk][: args.images],
    }
    for kind, chosen in kinds.items():
        if not chosen:
            print(f"kind: {kind} photos: 0")
            continue
        photos = [p.read_bytes() for p in chosen]
        sizes = [Image.open(io.BytesIO(d)).size for d in photos]
        print(
            f"kind: {kind} photos: {len(photos)} mean_kb: {sum(map(len, photos)) / len(photos) / 1024:.1f} "
            f"mean_size: {sum(w for w, _ in sizes) / len(sizes):.0f}x{sum(h for _, h in sizes) / len(sizes):.0f}"
        )
        for name, fn in (
            ("served", served),
            ("exif_copy", exif_copy),
            ("draft", draft),
            ("reducing_gap_1", reducing_gap_1),
        ):
            line = f"  path: {name} cpu_ms_per_photo: {cpu_ms(fn, photos, args.repeats):.3f}"
            if name in ("draft", "reducing_gap_1"):
                line += " " + pixel_change(fn, photos)
            print(line, flush=True)


if __name__ == "__main__":
    main()
