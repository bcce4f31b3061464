"""How the function reaches the model: a small interface, and its two implementations.

* :class:`SageMakerInvoker`: the SageMaker runtime's InvokeEndpoint (in AWS); the model's ``model.json`` is
  the one ``deploy-lambda`` bundled.
* :class:`UrlInvoker`: any binsight server's ``/invocations`` (on premises, and the tests); ``model.json`` comes
  from its ``GET /model``.

Both send one photo as ``application/x-image`` and read ``{"predictions": [...]}``. What the server refuses
(unreadable photo, too large: HTTP 4xx) raises :class:`PhotoRejected`, which no retry can fix; anything else
(throttling, 5xx, a timeout, no connection) raises :class:`ModelUnavailable`, which a retry may.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from service.model_metadata import ModelMetadata
from service.schemas import PredictionOut

CONTENT_TYPE = "application/x-image"


class PhotoRejected(ValueError):
    """The model server refused this photo (HTTP ``status``); the message is its reason."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ModelUnavailable(RuntimeError):
    """The model could not answer now (a retry may succeed)."""


class Invoker(Protocol):
    """One photo in, the model's answer out."""

    description: str

    def predict(self, image: bytes) -> PredictionOut: ...

    def metadata(self) -> ModelMetadata: ...


def parse_answer(body: bytes) -> PredictionOut:
    """The first prediction of an ``/invocations`` answer; an ``{"error": ...}`` entry is a rejected photo."""
    try:
        payload = json.loads(body)
        first = payload["predictions"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ModelUnavailable(f"unexpected answer from the model: {body[:200]!r}") from None
    if isinstance(first, dict) and "error" in first and "count" not in first:
        raise PhotoRejected(str(first["error"]))
    return PredictionOut.model_validate(first)


def error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", errors="replace")[:500] or "no reason given"


class UrlInvoker:
    """A binsight server at ``base_url`` (``/invocations`` and ``/model`` under it)."""

    def __init__(self, base_url: str, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/invocations")
        self.timeout_s = timeout_s
        self.description = f"url: {self.base_url}/invocations"

    def _request(self, path: str, data: bytes | None = None) -> bytes:
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = CONTENT_TYPE
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise PhotoRejected(error_text(body), exc.code) from None
            raise ModelUnavailable(f"{path} answered {exc.code}: {error_text(body)}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ModelUnavailable(f"{self.base_url}{path} unreachable: {exc}") from None

    def predict(self, image: bytes) -> PredictionOut:
        return parse_answer(self._request("/invocations", image))

    def metadata(self) -> ModelMetadata:
        return ModelMetadata.model_validate(json.loads(self._request("/model"))["metadata"])


class SageMakerInvoker:
    """A SageMaker endpoint through the runtime API (``runtime``: a boto3 ``sagemaker-runtime`` client)."""

    def __init__(self, endpoint_name: str, runtime: Any, model_json: Path) -> None:
        self.endpoint_name = endpoint_name
        self.runtime = runtime
        self.model_json = model_json
        self.description = f"endpoint: {endpoint_name}"

    def predict(self, image: bytes) -> PredictionOut:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.runtime.invoke_endpoint(
                EndpointName=self.endpoint_name, Body=image, ContentType=CONTENT_TYPE, Accept="application/json"
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("OriginalStatusCode")
            message = str(error.get("Message", ""))
            # ModelError: the container answered 4xx/5xx; its own status says which
            if error.get("Code") == "ModelError" and isinstance(status, int) and 400 <= status < 500:
                raise PhotoRejected(_model_error_reason(exc), status) from None
            if "payload" in message.lower() and "large" in message.lower():
                raise PhotoRejected(message, 413) from None
            raise ModelUnavailable(f"InvokeEndpoint failed: {error.get('Code')}: {message}") from None
        except BotoCoreError as exc:
            raise ModelUnavailable(f"InvokeEndpoint failed: {exc}") from None
        return parse_answer(response["Body"].read())

    def metadata(self) -> ModelMetadata:
        return ModelMetadata.model_validate_json(self.model_json.read_bytes())


def _model_error_reason(exc: Any) -> str:
    """The container's own ``{"error": ...}`` text from a ModelError (OriginalMessage), else its message."""
    original = exc.response.get("OriginalMessage")
    if original:
        return error_text(original.encode() if isinstance(original, str) else original)
    return str(exc.response.get("Error", {}).get("Message", "the model refused the photo"))
