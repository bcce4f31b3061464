"""The Lambda entry point: ``binsight_aws.lambda_fn.handler.handler`` (S3 events and Function URL requests).

The settings, clients and invoker are made on the first event and kept for the container's later events
(a warm Lambda container handles many); nothing is made at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from binsight_aws.lambda_fn.counting import Counter
from binsight_aws.lambda_fn.function_url import FunctionUrl
from binsight_aws.lambda_fn.invokers import Invoker, SageMakerInvoker, UrlInvoker
from binsight_aws.lambda_fn.s3_trigger import S3Trigger
from binsight_aws.lambda_fn.settings import LambdaSettings, load_settings

_STATE: dict[str, Any] = {}


def make_invoker(settings: LambdaSettings) -> Invoker:
    if settings.invocations_url:
        return UrlInvoker(settings.invocations_url, timeout_s=settings.timeout_s)
    import boto3
    import botocore.config

    runtime = boto3.client(
        "sagemaker-runtime",
        config=botocore.config.Config(read_timeout=settings.timeout_s, retries={"mode": "standard"}),
    )
    return SageMakerInvoker(settings.endpoint_name or "", runtime, settings.model_json_path())


def make_s3() -> Any:
    import boto3

    return boto3.client("s3")


def handle(event: Mapping[str, Any], counter: Counter, s3: Any, log: Any = print) -> dict[str, Any]:
    """One event: S3 notification records, or a Function URL request (payload format 2.0)."""
    if "Records" in event:
        return S3Trigger(counter, s3, log).handle(dict(event))
    if "requestContext" in event:
        return FunctionUrl(counter, s3).handle(dict(event))
    raise ValueError(f"unknown event (keys {sorted(event)}): expected S3 records or a Function URL request")


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    if "counter" not in _STATE:
        settings = load_settings()
        _STATE["counter"] = Counter(make_invoker(settings), settings)
        _STATE["s3"] = make_s3()
        print(f"binsight_lambda: ready {_STATE['counter'].invoker.description}")
    return handle(event, _STATE["counter"], _STATE["s3"])
