"""Retries with exponential backoff and full jitter, for errors that go away by themselves.

Retried: throttling, HTTP 5xx and 429, dropped or timed-out connections, a body cut short. Not
retried: 403, 404 and every other client error (they do not fix themselves).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import botocore.exceptions

from binsight_aws.validate import error_code

T = TypeVar("T")

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "SlowDown",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
CONNECTION_ERRORS = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectionClosedError, ...
    botocore.exceptions.HTTPClientError,  # ReadTimeoutError, ConnectTimeoutError, ProxyConnectionError
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    ConnectionError,
    TimeoutError,
)


class IncompleteBody(Exception):
    """Fewer bytes arrived than the response's Content-Length promised."""


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, IncompleteBody):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in THROTTLING_CODES or status >= 500 or status == 429
    return isinstance(exc, CONNECTION_ERRORS)


def describe_error(exc: BaseException) -> str:
    """One line: ``404 NoSuchKey: The specified key does not exist.`` or ``EndpointConnectionError: ...``."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = error.get("Message") or ""
        return f"{status} {error.get('Code', 'Error')}" + (f": {message}" if message else "")
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


@dataclass
class Backoff:
    """``delay(n)`` for the n-th retry (0-based): uniform in [0, min(cap, base * 2**n)]."""

    retries: int = 5
    base_s: float = 0.5
    cap_s: float = 20.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random | None = None

    def delay(self, attempt: int) -> float:
        rng = self.rng or random
        return rng.uniform(0, min(self.cap_s, self.base_s * 2**attempt))

    def call(self, fn: Callable[[], T], on_retry: Callable[[int, BaseException], None] | None = None) -> T:
        """``fn()``, retried up to ``retries`` times on retryable errors; the last error is raised."""
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below
                if attempt >= self.retries or not is_retryable(exc):
                    raise
                if on_retry is not None:
                    on_retry(attempt, exc)
                self.sleep(self.delay(attempt))
                attempt += 1
