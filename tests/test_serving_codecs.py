"""service.codecs: request decoding and response encoding per content type."""

from __future__ import annotations

import json
import re

import pytest

from service.codecs import (
    JSON,
    JSONLINES,
    OCTET_STREAM,
    SUPPORTED_REQUEST_TYPES,
    BadRequest,
    NotAcceptable,
    UnsupportedMediaType,
    choose_response_type,
    decode_request,
    encode_response,
    request_kind,
)

from serving_support import b64


@pytest.mark.parametrize(
    "content_type, kind",
    [
        ("image/jpeg", "image"),
        ("IMAGE/PNG; charset=binary", "image"),
        ("application/x-image", "image"),
        ("image/jpg", "image"),
        ("image/webp", "image"),
        ("image/heic", "image"),
        ("image/heif", "image"),
        ("image/gif", "image"),
        ("image/avif", "image"),
        ("image/tiff", "image"),
        ("image/bmp", "image"),
        ("application/json; charset=utf-8", "json"),
        ("application/jsonlines", "jsonlines"),
        ("application/x-jsonlines", "jsonlines"),
        ("application/octet-stream", "sniff"),
        ("binary/octet-stream", "sniff"),
        (None, "sniff"),
        ("", "sniff"),
    ],
)
def test_request_kinds(content_type: str, kind: str) -> None:
    assert request_kind(content_type) == kind


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "multipart/form-data",
        "image/svg+xml",
        "text/csv",
        "application/postscript",
        "image/vnd.adobe.photoshop",
    ],
)
def test_unsupported_content_type_is_415_naming_the_supported_ones(content_type) -> None:
    with pytest.raises(UnsupportedMediaType, match="application/octet-stream .*application/json") as info:
        request_kind(content_type)
    assert info.value.status_code == 415


def test_every_type_the_message_names_is_accepted_and_every_readable_format_has_one() -> None:
    from PIL import Image

    from service.image_formats import image_media_types, readable_formats

    named = re.findall(r"[a-z]+/[a-z0-9.+-]+", " ".join(SUPPORTED_REQUEST_TYPES))
    assert len(named) >= 10 and all(request_kind(kind) != "sniff" or kind == OCTET_STREAM for kind in named)
    assert {"JPEG", "PNG", "WEBP", "HEIF"} <= set(readable_formats())
    assert all(Image.MIME[name] in image_media_types() for name in readable_formats())


@pytest.mark.parametrize(
    "body, kind, images",
    [
        (b"\xff\xd8\xff\xe0 jpeg bytes", "image", [b"\xff\xd8\xff\xe0 jpeg bytes"]),
        (b"RIFF....WEBPVP8 ", "image", [b"RIFF....WEBPVP8 "]),
        (b"not json, not an image", "image", [b"not json, not an image"]),
        (json.dumps({"instances": [{"b64": "YQ=="}, {"b64": "Yg=="}]}).encode(), "json", [b"a", b"b"]),
        (b'  {"b64": "YQ=="}\n{"b64": "Yg=="}\n', "jsonlines", [b"a", b"b"]),
        (b'{"b64": "YQ=="}', "jsonlines", [b"a"]),
    ],
)
def test_octet_stream_is_read_from_its_bytes(body: bytes, kind: str, images: list[bytes]) -> None:
    decoded = decode_request("sniff", body)
    assert (decoded.kind, decoded.images) == (kind, images)


def test_octet_stream_that_looks_like_broken_json_names_the_line() -> None:
    with pytest.raises(BadRequest, match="line 2 is not valid JSON"):
        decode_request("sniff", b'{"b64": "YQ=="}\n{broken')


def test_raw_image_is_one_instance() -> None:
    assert decode_request("image", b"\xff\xd8abc").images == [b"\xff\xd8abc"]


def test_json_instances_decode_base64_in_order() -> None:
    body = json.dumps(
        {
            "instances": [
                {"b64": b64(b"first")},
                {"b64": "data:image/jpeg;base64," + b64(b"second")},
                {"b64": b64(b"third")[:4] + "\n" + b64(b"third")[4:]},
            ]
        }
    ).encode()
    assert decode_request("json", body).images == [b"first", b"second", b"third"]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty body"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not UTF-8|not valid JSON"),
        (b"[1, 2]", "instances"),
        (b'{"images": []}', "instances"),
        (b'{"instances": []}', "non-empty"),
        (b'{"instances": "abc"}', "non-empty"),
        (b'{"instances": [{"data": "abc"}]}', r"instances\[0\].*b64"),
        (b'{"instances": [{"b64": 42}]}', r"instances\[0\].*b64"),
        (b'{"instances": [{"b64": "aGVsbG8="}, {"b64": "not base64!!"}]}', r"instances\[1\].*not valid base64"),
        (b'{"instances": [{"b64": "aGVsbG8"}]}', "not valid base64"),
        (b'{"instances": [{"b64": "h\\u00e9llo"}]}', "not valid base64"),
    ],
)
def test_malformed_json_is_a_400_naming_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as info:
        decode_request("json", body)
    assert info.value.status_code == 400


def test_jsonlines_one_instance_per_line_blank_lines_skipped() -> None:
    body = f'{{"b64": "{b64(b"a")}"}}\n\n{{"b64": "{b64(b"b")}"}}\r\n'.encode()
    assert decode_request("jsonlines", body).images == [b"a", b"b"]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty body"),
        (b"\n\n", "empty body"),
        (b'{"b64": "YQ=="}\n{broken', "line 2 is not valid JSON"),
        (b'{"b64": "YQ=="}\n[1]', "line 2 must be an object"),
        (b'{"b64": "YQ=="}\n{"b64": "%%%"}', "line 2.*not valid base64"),
    ],
)
def test_malformed_jsonlines(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_request("jsonlines", body)


@pytest.mark.parametrize(
    "accept, expected",
    [
        (None, JSON),
        ("", JSON),
        ("*/*", JSON),
        ("application/json", JSON),
        ("application/jsonlines", JSONLINES),
        ("application/jsonlines;q=0.9, application/json;q=0.5", JSONLINES),
        ("application/json;q=0.2, application/jsonlines", JSONLINES),
        ("text/html, application/*;q=0.1", JSON),
        ("application/x-jsonlines", JSONLINES),
    ],
)
def test_accept_negotiation(accept, expected: str) -> None:
    assert choose_response_type(accept) == expected


@pytest.mark.parametrize("accept", ["text/csv", "application/json;q=0", "image/png, text/plain"])
def test_unservable_accept_is_406(accept: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        choose_response_type(accept)
    assert info.value.status_code == 406


def test_encodings() -> None:
    results = [{"count": 1}, {"error": "bad"}]
    assert json.loads(encode_response(results, JSON)) == {"predictions": results}
    lines = encode_response(results, JSONLINES).decode().splitlines()
    assert [json.loads(line) for line in lines] == results
