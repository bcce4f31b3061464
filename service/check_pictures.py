"""The pictures a predictor is warmed up and its runtimes compared on: made here, so no file ships for them."""

from __future__ import annotations

import io

from PIL import Image


def check_jpegs(input_size: int) -> list[bytes]:
    """Two JPEGs (a structured picture and its mirror image) a little larger than ``input_size``, so the
    resize runs as it does for real photos."""
    width, height = input_size + 13, input_size + 7
    ramp = Image.linear_gradient("L").resize((width, height))
    image = Image.merge(
        "RGB",
        (
            ramp,
            ramp.transpose(Image.Transpose.ROTATE_90).resize((width, height)),
            Image.new("L", (width, height), 110),
        ),
    )
    for i, colour in enumerate(((200, 40, 30), (30, 160, 60), (250, 250, 240))):
        x, y = (i * 2 + 1) * width // 8, (i + 1) * height // 5
        image.paste(colour, (x, y, x + width // 6, y + height // 7))
    out = []
    for picture in (image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)):
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out
