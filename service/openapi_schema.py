"""The OpenAPI document the app serves: FastAPI's, with the fixes Swagger UI 5 needs to upload files.

FastAPI (0.165) describes an ``UploadFile`` the OpenAPI 3.1 way, ``{"type": "string", "contentMediaType":
"application/octet-stream"}``. Swagger UI 5 renders a file picker for such a field on its own, but for the
items of an array (``list[UploadFile]``, the photos of ``POST /predict``) only when they say ``format: binary``
(swagger-ui issue #10825; fastapi PR #15069 puts it back); without it "Try it out" shows text boxes that send
the string ``"string"``. :func:`mark_binary_uploads` adds ``format: binary`` next to every such
``contentMediaType``; both keywords are valid OpenAPI 3.1, so other tools read the same document as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI

JsonObject = dict[str, Any]


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) return the fixed document, built once like FastAPI's."""
    generate: Callable[[], JsonObject] = app.openapi

    def openapi() -> JsonObject:
        if app.openapi_schema is None:
            document = generate()  # FastAPI caches it in app.openapi_schema; fixed in place below
            mark_binary_uploads(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def mark_binary_uploads(document: JsonObject) -> int:
    """Add ``format: binary`` to every file field (``type: string`` with a ``contentMediaType``) of a request
    body, array items included; returns how many were marked."""
    marked = 0
    for schema in _request_body_schemas(document):
        for node in _subschemas(schema):
            if node.get("type") == "string" and "contentMediaType" in node and "format" not in node:
                node["format"] = "binary"
                marked += 1
    return marked


# ------------------------------------------------------------------------------- walking the document


def _resolve(document: JsonObject, schema: JsonObject) -> JsonObject:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        return document.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[1], schema)
    return schema


def _request_bodies(document: JsonObject) -> Iterator[tuple[str, JsonObject]]:
    """(media type, resolved schema) of every request body of every operation."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
                if isinstance(content, dict) and isinstance(content.get("schema"), dict):
                    yield media_type, _resolve(document, content["schema"])


def _request_body_schemas(document: JsonObject) -> Iterator[JsonObject]:
    seen: set[int] = set()
    for _, schema in _request_bodies(document):
        if id(schema) not in seen:
            seen.add(id(schema))
            yield schema


def _subschemas(schema: JsonObject) -> Iterator[JsonObject]:
    """``schema`` and every schema nested in it (properties, items, anyOf/oneOf/allOf), without following $ref."""
    yield schema
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            yield from _subschemas(prop)
    if isinstance(schema.get("items"), dict):
        yield from _subschemas(schema["items"])
    for keyword in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(keyword, ()):
            if isinstance(option, dict):
                yield from _subschemas(option)
