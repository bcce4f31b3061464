"""``batch-transform``: count every photo under an S3 prefix with a SageMaker model.

Each photo is one request (``SplitType`` None, ``BatchStrategy`` SingleRecord, Content-Type
``application/x-image``); SageMaker writes ``<output>/<photo name>.out`` holding the serving
answer as JSON lines (``Accept: application/jsonlines``, ``AssembleWith`` Line).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from binsight_aws.configs import BatchTransformConfig
from binsight_aws.session import AwsClients
from binsight_aws.status import job_ended, wait_for_status
from binsight_aws.validate import InputError, parse_s3_uri
from training.log import Log, print_line

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def transform_request(config: BatchTransformConfig) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TransformJobName": config.job_name,
        "ModelName": config.model_name,
        "BatchStrategy": "SingleRecord",
        "MaxPayloadInMB": config.max_payload_mb,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": config.input_uri}},
            "ContentType": "application/x-image",
            "SplitType": "None",
            "CompressionType": "None",
        },
        "TransformOutput": {
            "S3OutputPath": config.output_uri,
            "Accept": "application/jsonlines",
            "AssembleWith": "Line",
        },
        "TransformResources": {"InstanceType": config.instance_type, "InstanceCount": config.instance_count},
        "Tags": [{"Key": "project", "Value": "binsight"}],
    }
    if config.max_concurrent_transforms:
        request["MaxConcurrentTransforms"] = config.max_concurrent_transforms
    return request


def count_inputs(s3: Any, uri: str) -> int:
    prefix = parse_s3_uri(uri)
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key):
        total += sum(1 for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))
    return total


def wait_for_transform_job(
    sagemaker: Any, name: str, *, poll_s: float, log: Log = print_line, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    return wait_for_status(
        lambda: sagemaker.describe_transform_job(TransformJobName=name),
        "TransformJobStatus",
        job_ended,
        name="transform_status",
        details=lambda d: {"failure_reason": d.get("FailureReason")},
        poll_s=poll_s,
        log=log,
        sleep=sleep,
    )


def run(
    config: BatchTransformConfig,
    log: Log = print_line,
    clients: AwsClients | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    clients = clients or AwsClients.for_command(config)
    photos = count_inputs(clients.client("s3"), config.input_uri)
    if photos == 0:
        raise InputError(f"--input-uri {config.input_uri} holds no objects")
    sagemaker = clients.client("sagemaker")
    arn = sagemaker.create_transform_job(**transform_request(config))["TransformJobArn"]
    log(
        f"transform_job: {config.job_name} arn: {arn} photos: {photos} model: {config.model_name} "
        f"output: {config.output_uri}"
    )
    if not config.wait:
        return EXIT_OK
    try:
        description = wait_for_transform_job(sagemaker, config.job_name, poll_s=config.poll_s, log=log, sleep=sleep)
    except KeyboardInterrupt:
        log(
            f"detached: the job keeps running; stop it with: aws sagemaker stop-transform-job "
            f"--transform-job-name {config.job_name}"
        )
        return EXIT_INTERRUPTED
    status = description["TransformJobStatus"]
    log(f"transform_result: {config.job_name} status: {status}")
    if status == "Completed":
        log(f"results: {config.output_uri.rstrip('/')}/<photo>.out (one JSON line per photo)")
        return EXIT_OK
    log(f"failure_reason: {description.get('FailureReason')}")
    return EXIT_FAILED
