"""Property-based API tests: schemathesis generates good and bad requests for every route and request content
type of the app's own OpenAPI document, in process; no answer may be a 5xx, and every answer must match
what the document says for its route (status, Content-Type, body schema)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import TypeAdapter, ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.artifact import metadata_for
from service.predictor import Predictor
from service.settings import ModelLocation, ServeSettings

from serving_support import ARCH, LABELS, FixedLogits, client_for, jpeg


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _quantity_text_is_valid(value) -> bool:
    """Whether the form field(s) an ``expected_quantity`` value becomes make a valid request: every multipart
    value is text (``"8"``, ``8.0`` and ``[8]`` arrive as text that reads as 8; ``""`` and ``[]`` as not given),
    read as FastAPI reads it (pydantic's lax integer, 0-10000)."""
    if isinstance(value, list):
        return len(value) == 0 or (len(value) == 1 and _quantity_text_is_valid(value[0]))
    if isinstance(value, bool) or value is None or isinstance(value, (dict, bytes)):
        return False
    if value == "":
        return True
    try:
        return 0 <= TypeAdapter(int).validate_python(str(value)) <= 10_000
    except ValidationError:
        return False


def _only_quantity_was_mutated(case) -> bool:
    """Whether every negative mutation of this case lies under the body's ``expected_quantity``."""
    data = case.meta.phase.data if case.meta is not None else None
    mutations = getattr(data, "mutations", None) or ()
    return bool(mutations) and all(m.schema_pointer.startswith("/properties/expected_quantity") for m in mutations)


def negative_data_rejection_on_the_wire(ctx, response, case):
    """schemathesis's ``negative_data_rejection``, less its false alarms on ``expected_quantity``: a
    schema-invalid value (a string, a list) that arrives as valid multipart text is a valid request, and so is
    a value that a mutation of one ``anyOf`` branch made valid for the other (``null`` "mutated" into 145, a
    valid integer); two or more fields are refused (``test_a_repeated_expected_quantity_is_refused``)."""
    if case.operation.path != "/predict" or not isinstance(case.body, dict):
        return negative_data_rejection(ctx, response, case)
    value = case.body.get("expected_quantity")
    schema_valid = value is None or (type(value) is int and 0 <= value <= 10_000)
    if not schema_valid and _quantity_text_is_valid(value):
        return None
    if schema_valid and _only_quantity_was_mutated(case):
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection_on_the_wire,
]


def fuzzed_app():
    predictor = Predictor(FixedLogits([0, 0, 1, 4, 1, 0, 0]), metadata_for(ARCH, LABELS, input_size=32))
    return create_app(ServeSettings(model=ModelLocation(path=None)), predictor)


# JSON Lines is text: sent as the generated string (schemathesis knows no serializer for it by itself)
schemathesis.serializer.alias("application/jsonlines", "text/plain")
for media_type in ("application/x-image", "image/heic"):  # raw image bodies, like image/jpeg
    schemathesis.serializer.alias(media_type, "application/octet-stream")
schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app())


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_answers_as_documented(case) -> None:
    case.call_and_validate(checks=CHECKS)


def test_error_schema_shows_no_message_of_another_status() -> None:
    """The 413 and 503 answers in /docs showed the 415 message: the shared schema carried it as its example."""
    document = fuzzed_app().openapi()
    error = document["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    assert "examples" not in error and "example" not in error
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                for example in response.get("content", {}).get("application/json", {}).get("examples", {}).values():
                    message = example["value"].get("error", "")
                    assert ("not supported" in message) == (status == "415"), (path, status, message)


@pytest.mark.anyio
async def test_a_repeated_expected_quantity_is_refused() -> None:
    """Found by the fuzzer: two expected_quantity fields were answered 200 with one of them picked silently."""
    parts = [("files", ("a.jpg", jpeg(), "image/jpeg")), ("expected_quantity", (None, "1"))]
    async with client_for(fuzzed_app()) as client:
        once = await client.post("/predict", files=parts)
        twice = await client.post("/predict", files=[*parts, ("expected_quantity", (None, "2"))])
    assert once.status_code == 200 and once.json()["results"][0]["expected_quantity"] == 1
    assert twice.status_code == 422
    assert twice.json() == {"error": "invalid request: expected_quantity: sent 2 times; send it once"}
