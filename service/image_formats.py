"""The image formats binsight reads, as one list: the decoder opens only these, and ``/invocations``
accepts exactly their media types (``/predict`` reads the same bytes with the same decoder).

Photo formats only: JPEG, PNG, WebP, GIF (first frame), BMP, TIFF, AVIF, JPEG 2000, and HEIC/HEIF (what
phones shoot) through ``pi-heif`` (libheif's decoder, no encoder; a dependency, so it is there wherever its
wheels install). The rest of Pillow's readers (EPS through Ghostscript, PSD, ICO, ...) are not photos
of bins and widen what an upload can reach, so the decoder does not try them. Which format a body is
comes from its bytes, never from its ``Content-Type``.
"""

from __future__ import annotations

import functools

from PIL import Image

#: Pillow format names, in the order error messages list them.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "JPEG2000", "HEIF")
#: Media types people and clients use besides Pillow's own (``Image.MIME``).
_ALIASES = {
    "JPEG": ("image/jpg", "image/pjpeg"),
    "PNG": ("image/x-png",),
    "BMP": ("image/x-ms-bmp", "image/x-bmp"),
    "TIFF": ("image/tif",),
    "JPEG2000": ("image/jpx", "image/jpeg2000"),
    "HEIF": ("image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"),
}
#: What messages ask for (fixed text, so documented errors equal real ones on every installation).
PHOTO_HINT = "a JPEG, PNG, WebP, HEIC or other common photo"
#: SageMaker's generic image type (the built-in vision algorithms use it): any of the formats.
ANY_IMAGE = "application/x-image"


@functools.cache
def register_optional_decoders() -> tuple[str, ...]:
    """Register the HEIF opener once when ``pi-heif`` is installed; the formats it added."""
    try:
        from pi_heif import register_heif_opener
    except ImportError:
        return ()
    register_heif_opener()
    return ("HEIF",)


@functools.cache
def readable_formats() -> tuple[str, ...]:
    """The :data:`PHOTO_FORMATS` this installation can decode (Pillow's plugins plus the optional ones)."""
    register_optional_decoders()
    Image.init()
    return tuple(name for name in PHOTO_FORMATS if name in Image.OPEN)


@functools.cache
def image_media_types() -> tuple[str, ...]:
    """Every ``Content-Type`` that names a readable format, plus ``application/x-image``."""
    types = [ANY_IMAGE]
    for name in readable_formats():
        own = Image.MIME.get(name)
        types += [own] if own else []
        types += _ALIASES.get(name, ())
    return tuple(dict.fromkeys(types))
