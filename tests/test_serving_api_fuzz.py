"""Property-based API tests: schemathesis generates good and bad requests for every route and request content
type of the app's own OpenAPI document, in process; no answer may be a 5xx, and every answer must match
what the document says for its route (status, Content-Type, body schema)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
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

from serving_support import ARCH, LABELS, FixedLogits

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
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
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
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
