"""The error answers the routes document in ``/docs``, each with an example of the message really sent.

Every error is ``{"error": "..."}`` (see ``service.app``), so one schema fits all; what tells them apart
is the message, hence named examples per status. ``tests/test_docs_ui.py`` sends the request each
example describes and compares the answer with the example, so an example cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from service.schemas import ErrorResponse, PingResponse

# The limit as the default settings give it (SAGEMAKER_MAX_PAYLOAD_IN_MB=6).
TOO_LARGE = (
    "request body is larger than the limit of 6 MiB (6291456 bytes; SAGEMAKER_MAX_PAYLOAD_IN_MB); "
    "send fewer or smaller images per request"
)
LOADING = "model is loading (for 2.4 s); retry shortly"
FAILED = "model failed to load: /opt/ml/model/model.json is missing: a model directory needs model.json and model.pth"

DRAINING = "server is shutting down (SIGTERM 0.4 s ago, grace period 25 s); send requests to another instance"

Example = tuple[str, str]  # (summary shown in the examples menu, the message)


def error_response(description: str, **examples: Example) -> dict[str, Any]:
    """A FastAPI ``responses`` entry: the :class:`ErrorResponse` schema and the named examples."""
    return {
        "model": ErrorResponse,
        "description": description,
        "content": {
            "application/json": {
                "examples": {
                    name: {"summary": summary, "value": {"error": message}}
                    for name, (summary, message) in examples.items()
                }
            }
        },
    }


NOT_READY = error_response(
    "The model is loading or failed to load.",
    loading=("the model is still loading", LOADING),
    failed=("the model failed to load", FAILED),
)

PING_NOT_READY: dict[str, Any] = {
    "model": PingResponse,
    "description": "The model is loading or failed to load, or the server is shutting down: `detail` says why.",
    "content": {
        "application/json": {
            "examples": {
                "loading": {"summary": "the model is still loading", "value": {"status": "loading", "detail": LOADING}},
                "failed": {"summary": "the model failed to load", "value": {"status": "failed", "detail": FAILED}},
                "draining": {
                    "summary": "the server is shutting down (SIGTERM): it answers what it has received, then exits",
                    "value": {"status": "draining", "detail": DRAINING},
                },
            }
        }
    },
}

TOO_LARGE_RESPONSE = error_response(
    "Body larger than SAGEMAKER_MAX_PAYLOAD_IN_MB.", too_large=("the request body is over the limit", TOO_LARGE)
)

PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_response(
        "None of the uploaded files could be read as a photo (when some can, the others get `error` in "
        "their result instead).",
        unreadable=(
            "no photo could be read",
            "no photo could be read: notes.txt: not a recognised image format "
            "(13 bytes starting b'shopping'); send a JPEG, PNG, WebP, HEIC or other "
            "common photo",
        ),
    ),
    413: TOO_LARGE_RESPONSE,
    422: error_response(
        "The form is incomplete or a field has the wrong type.",
        no_files=("no photo sent", "invalid request: files: Field required"),
        bad_quantity=(
            "expected_quantity is not a whole number",
            "invalid request: expected_quantity: Input should be a valid integer, unable to parse string as an integer",
        ),
    ),
    503: NOT_READY,
}

INVOCATIONS_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_response(
        "Malformed JSON/base64, or no image could be read.",
        not_an_image=(
            "the body is not an image",
            "not a recognised image format (5 bytes starting b'hello'); "
            "send a JPEG, PNG, WebP, HEIC or other common photo",
        ),
        truncated=(
            "the image is cut off",
            "image data is corrupt or truncated: image file is truncated (16 bytes not processed)",
        ),
        bad_json=(
            "the JSON cannot be parsed",
            "request body is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2",
        ),
        bad_base64=(
            "an instance is not base64",
            'instances[0]: "b64" is not valid base64 (Only base64 data is allowed)',
        ),
    ),
    406: error_response(
        "Accept is neither application/json nor application/jsonlines.",
        not_acceptable=(
            "Accept: text/csv",
            "Accept 'text/csv' cannot be served; this endpoint answers application/json or application/jsonlines",
        ),
    ),
    413: TOO_LARGE_RESPONSE,
    415: error_response(
        "Unsupported Content-Type.",
        unsupported=(
            "Content-Type: text/plain",
            "Content-Type 'text/plain' is not supported; send an image "
            "(image/jpeg, image/png, image/webp, image/heic, image/avif, "
            "image/gif, image/bmp, image/tiff or application/x-image), "
            "application/octet-stream (read from its bytes), application/json "
            "or application/jsonlines",
        ),
    ),
    503: NOT_READY,
}
