"""The Function URL: ``POST`` a photo (base64, or an ``s3://`` reference under the input prefix) and an optional
expected quantity; the answer is what ``POST /predict`` answers (:class:`~service.schemas.PredictResponse`,
or :class:`~service.schemas.ErrorResponse` with the same status codes: 400 unreadable photo, 413 too large,
422 invalid request), from the same schema and manual-check code.

Request body (``application/json``)::

    {"b64": "<base64 photo>", "expected_quantity": 3, "filename": "bin-17.jpg"}
    {"s3_uri": "s3://<bucket>/<input prefix>bin-17.jpg", "expected_quantity": 3}

or the raw photo as the body (any other Content-Type) with ``?expected_quantity=3``.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from binsight_aws.lambda_fn.counting import Counter
from binsight_aws.lambda_fn.invokers import ModelUnavailable
from service.schemas import ErrorResponse


class UrlRequest(BaseModel):
    """One photo, as base64 or an S3 reference, and what the bin should hold."""

    model_config = ConfigDict(extra="forbid")

    b64: str | None = Field(None, description="The photo, base64")
    s3_uri: str | None = Field(None, description="s3://bucket/key of a photo under the input prefix")
    expected_quantity: int | None = Field(None, ge=0, le=10_000, description="As /predict's form field")
    filename: str | None = Field(None, max_length=1024)

    @model_validator(mode="after")
    def _one_photo(self) -> UrlRequest:
        if (self.b64 is None) == (self.s3_uri is None):
            raise ValueError("give exactly one of b64 and s3_uri")
        return self


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def respond(status: int, body: BaseModel) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": body.model_dump_json(),
    }


class FunctionUrl:
    def __init__(self, counter: Counter, s3: Any) -> None:
        self.counter = counter
        self.s3 = s3
        self.settings = counter.settings

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        try:
            method = event.get("requestContext", {}).get("http", {}).get("method", "POST")
            if method != "POST":
                raise HttpError(405, f"{method} is not supported; POST a photo")
            request = self.parse(event)
            image, filename = self.photo(request)
            result = self.counter.count(image, filename, request.expected_quantity)
        except HttpError as exc:
            return respond(exc.status, ErrorResponse(error=str(exc)))
        except ModelUnavailable as exc:
            return respond(503, ErrorResponse(error=f"the model is unavailable: {exc}"))
        if result.error:  # /predict: 400 when no photo could be read (413 for one over the limit)
            status = 413 if "above the model's request limit" in result.error else 400
            return respond(status, ErrorResponse(error=f"no photo could be read: {filename or 0}: {result.error}"))
        return respond(200, self.counter.response([result]))

    def parse(self, event: dict[str, Any]) -> UrlRequest:
        raw = event.get("body") or ""
        data = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
        headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
        content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        try:
            if content_type == "application/json":
                try:
                    fields = json.loads(data or b"{}")
                except ValueError as exc:
                    raise HttpError(422, f"invalid request: body is not JSON ({exc})") from None
                if not isinstance(fields, dict):
                    raise HttpError(422, "invalid request: the body must be a JSON object")
                return UrlRequest.model_validate(fields)
            query = event.get("queryStringParameters") or {}
            return UrlRequest.model_validate(
                {"b64": base64.b64encode(data).decode(), **{k: query[k] for k in query if k != "b64"}}
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise HttpError(422, f"invalid request: {problems}") from None

    def photo(self, request: UrlRequest) -> tuple[bytes, str | None]:
        if request.b64 is not None:
            limit = self.settings.max_payload_bytes
            if len(request.b64) * 3 // 4 > limit + 3:
                raise HttpError(413, f"photo is above the model's request limit of {limit} bytes")
            try:
                return base64.b64decode(request.b64, validate=True), request.filename
            except (binascii.Error, ValueError) as exc:
                raise HttpError(422, f"invalid request: b64 is not base64 ({exc})") from None
        parsed = urllib.parse.urlparse(request.s3_uri or "")
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        if parsed.scheme != "s3" or not bucket or not key:
            raise HttpError(422, f"invalid request: s3_uri {request.s3_uri!r} is not s3://bucket/key")
        if bucket != self.settings.bucket or not key.startswith(self.settings.input_prefix):
            raise HttpError(
                403,
                f"this function reads photos under s3://{self.settings.bucket}/{self.settings.input_prefix} only",
            )
        from botocore.exceptions import ClientError

        try:
            photo = self.s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound", "AccessDenied", "403"):
                raise HttpError(404, f"{request.s3_uri} does not exist") from None
            raise
        return photo["Body"].read(), request.filename or key.rsplit("/", 1)[-1]
