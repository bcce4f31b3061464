"""Request decoding and response encoding for ``/invocations``, per content type.

Requests:

* an image type (``image/jpeg``, ``image/png``, ``image/webp``, ``image/heic``, ... every format the decoder
  reads: :mod:`service.image_formats`) or ``application/x-image``: the body is one image;
* ``application/json``: ``{"instances": [{"b64": "<base64 image>"}, ...]}``, a batch;
* ``application/jsonlines``: one JSON object ``{"b64": ...}`` per line (SageMaker batch transform
  with ``SplitType=Line``);
* ``application/octet-stream`` (what the SageMaker SDK's ``IdentitySerializer`` and many HTTP clients send),
  S3's ``binary/octet-stream``, or no ``Content-Type`` at all (RFC 9110 lets the recipient examine the data):
  the bytes decide: a body starting with ``{`` is JSON (with ``"instances"``) or JSON Lines, anything else
  one image.

Which image format a body holds always comes from its bytes (WebP sent as ``image/jpeg`` is read); the
``Content-Type`` only says how the body is split. ``/predict`` reads each uploaded file the same way, from
its bytes.

Responses (``Accept``): ``application/json`` (default) ``{"predictions": [...]}``, or
``application/jsonlines``, one prediction object per line in request order.

Structural problems (malformed JSON or base64, wrong shape) fail the whole request with a
:class:`CodecError`; whether each image can be decoded is decided later, per image.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from service.image_formats import image_media_types

JSON = "application/json"
JSONLINES = "application/jsonlines"
OCTET_STREAM = "application/octet-stream"
JSONLINES_TYPES = (JSONLINES, "application/x-jsonlines", "application/jsonl")
#: Bodies whose kind is read from their bytes ("" = no Content-Type).
SNIFFED_TYPES = ("", OCTET_STREAM, "binary/octet-stream")
#: The accepted request types, as the 415 message lists them (fixed text: documented errors equal real ones).
SUPPORTED_REQUEST_TYPES = (
    "an image (image/jpeg, image/png, image/webp, image/heic, image/avif, image/gif, "
    "image/bmp, image/tiff or application/x-image)",
    f"{OCTET_STREAM} (read from its bytes)",
    JSON,
    JSONLINES,
)
RESPONSE_TYPES = (JSON, JSONLINES)

RequestKind = Literal["image", "json", "jsonlines", "sniff"]
_WHITESPACE = re.compile(rb"\s+")
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)


class CodecError(ValueError):
    """A request the server cannot take; ``status_code`` is the HTTP status to answer with."""

    status_code = 400


class BadRequest(CodecError):
    status_code = 400


class UnsupportedMediaType(CodecError):
    status_code = 415


class NotAcceptable(CodecError):
    status_code = 406


@dataclass(frozen=True)
class DecodedRequest:
    """The images of one request, in order, and how they were sent."""

    images: list[bytes]
    kind: Literal["image", "json", "jsonlines"]


def media_type(header: str | None) -> str:
    """``"Image/JPEG; q=1"`` -> ``"image/jpeg"``; missing -> ``""``."""
    return (header or "").split(";", 1)[0].strip().lower()


def request_kind(content_type: str | None) -> RequestKind:
    """How a body of this ``Content-Type`` is read; :class:`UnsupportedMediaType` (415) if it cannot be."""
    kind = media_type(content_type)
    if kind in SNIFFED_TYPES:
        return "sniff"
    if kind in image_media_types():
        return "image"
    if kind == JSON:
        return "json"
    if kind in JSONLINES_TYPES:
        return "jsonlines"
    raise UnsupportedMediaType(
        f"Content-Type {content_type!r} is not supported; send "
        f"{', '.join(SUPPORTED_REQUEST_TYPES[:-1])} or {SUPPORTED_REQUEST_TYPES[-1]}"
    )


def sniff_kind(body: bytes) -> RequestKind:
    """What an ``application/octet-stream`` body holds: JSON / JSON Lines when it starts with ``{`` (no image
    format does), else one image."""
    if body.lstrip()[:1] != b"{":
        return "image"
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # several lines, or broken: read as JSON Lines, which names the line
        return "jsonlines"
    return "json" if isinstance(document, dict) and "instances" in document else "jsonlines"


def decode_request(kind: RequestKind, body: bytes) -> DecodedRequest:
    """Split a request body into image bytes; ``kind`` comes from :func:`request_kind`."""
    if kind == "sniff":
        kind = sniff_kind(body)
    if kind == "image":
        return DecodedRequest([body], "image")
    if kind == "json":
        return DecodedRequest(_json_instances(body), "json")
    return DecodedRequest(_jsonlines_instances(body), "jsonlines")


def _json_instances(body: bytes) -> list[bytes]:
    if not body.strip():
        raise BadRequest('empty body: expected JSON {"instances": [{"b64": "<base64 image>"}, ...]}')
    document = _parse_json(body, "request body")
    if not isinstance(document, dict) or "instances" not in document:
        raise BadRequest('JSON body must be an object {"instances": [{"b64": "<base64 image>"}, ...]}')
    instances = document["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list of {"b64": "<base64 image>"} objects')
    return [_instance_bytes(item, f"instances[{i}]") for i, item in enumerate(instances)]


def _jsonlines_instances(body: bytes) -> list[bytes]:
    images = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        images.append(_instance_bytes(_parse_json(line, f"line {number}"), f"line {number}"))
    if not images:
        raise BadRequest('empty body: expected one JSON object {"b64": "<base64 image>"} per line')
    return images


def _parse_json(data: bytes, where: str):
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{where} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadRequest(f"{where} is nested too deeply to be parsed") from None


def _instance_bytes(item, where: str) -> bytes:
    if not isinstance(item, dict) or not isinstance(item.get("b64"), str):
        raise BadRequest(f'{where} must be an object with a "b64" string holding a base64-encoded image')
    text = _DATA_URL.sub("", item["b64"], count=1)
    try:
        raw = _WHITESPACE.sub(b"", text.encode("ascii"))
        return base64.b64decode(raw, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise BadRequest(f'{where}: "b64" is not valid base64 ({exc})') from None


# ------------------------------------------------------------------------------- responses


def choose_response_type(accept: str | None) -> str:
    """Pick the response type from ``Accept``: JSON unless JSON Lines is preferred; 406 if neither fits."""
    if accept is None or not accept.strip():
        return JSON
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        kind = pieces[0].lower()
        quality = 1.0
        for param in pieces[1:]:
            if param.lower().startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        match = _match_response_type(kind)
        if match:
            ranked.append((-quality, position, match))
    if not ranked:
        raise NotAcceptable(f"Accept {accept!r} cannot be served; this endpoint answers {' or '.join(RESPONSE_TYPES)}")
    return min(ranked)[2]


def _match_response_type(kind: str) -> str | None:
    if kind in ("*/*", "application/*", JSON):
        return JSON
    if kind in JSONLINES_TYPES:
        return JSONLINES
    return None


def encode_response(results: Iterable[dict], response_type: str) -> bytes:
    """Result dicts (predictions or ``{"error": ...}``) -> response body."""
    if response_type == JSONLINES:
        return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in results)
    return json.dumps({"predictions": list(results)}, separators=(",", ":")).encode()
