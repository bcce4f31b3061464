"""``deploy``, ``delete-endpoint`` and ``invoke``: a real-time SageMaker endpoint with the serving image.

Deploying always makes a new model and endpoint config (both named ``<endpoint>-<time>``, or
``--model-name``), then creates
the endpoint or points the existing one at the new config (UpdateEndpoint: SageMaker swaps the
instances without downtime and rolls back if the new ones fail their health checks).
"""

from __future__ import annotations

import json
import mimetypes
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from binsight_aws.configs import DeleteEndpointConfig, DeployConfig, InvokeConfig
from binsight_aws.model_package import package, upload_archive, upload_target
from binsight_aws.serverless import check_switch, container_environment, variant_summary
from binsight_aws.session import AwsClients
from binsight_aws.status import wait_for_status
from binsight_aws.validate import InputError, error_code, parse_s3_uri
from training.log import Log, print_line

VARIANT = "AllTraffic"
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
IMAGE_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}

#: Endpoint statuses that change by themselves; any other one is where a deployment ended.
DEPLOYING = ("Creating", "Updating", "SystemUpdating", "RollingBack")


def describe_endpoint(sagemaker: Any, name: str) -> dict[str, Any] | None:
    """The endpoint's description, or ``None`` when there is no such endpoint."""
    try:
        return sagemaker.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        message = str(exc.response.get("Error", {}).get("Message", ""))
        if error_code(exc) in ("ValidationException", "ResourceNotFound") and "not find" in message.lower():
            return None
        raise


def model_request(name: str, config: DeployConfig, model_data: str) -> dict[str, Any]:
    container: dict[str, Any] = {"Image": config.image_uri, "ModelDataUrl": model_data, "Mode": "SingleModel"}
    env = container_environment(config)  # --serverless adds its body limit
    if env:
        container["Environment"] = env
    return {
        "ModelName": name,
        "ExecutionRoleArn": config.role_arn,
        "PrimaryContainer": container,
        "Tags": [{"Key": "project", "Value": "binsight"}],
    }


def endpoint_config_request(name: str, model_name: str, config: DeployConfig) -> dict[str, Any]:
    return {
        "EndpointConfigName": name,
        "ProductionVariants": [
            {"VariantName": VARIANT, "ModelName": model_name, "InitialVariantWeight": 1.0}
            | (
                {"ServerlessConfig": config.serverless_config()}
                if config.serverless
                else {"InitialInstanceCount": config.instance_count, "InstanceType": config.instance_type}
            )
        ],
        "Tags": [{"Key": "project", "Value": "binsight"}],
    }


def resolve_model_data(config: DeployConfig, clients: AwsClients, model_name: str, log: Log) -> str:
    """The S3 URI of the model.tar.gz to serve (packaged and uploaded for ``--model-dir``)."""
    s3 = clients.client("s3")
    if config.model_dir is not None:
        with tempfile.TemporaryDirectory(prefix="binsight-model-") as tmp:
            archive = package(config.model_dir, Path(tmp) / "model.tar.gz", log)
            target = upload_target(config.upload_uri, f"{model_name}/model.tar.gz")  # type: ignore[arg-type]
            return upload_archive(s3, archive, target, log)
    if config.training_job is not None:
        job = clients.client("sagemaker").describe_training_job(TrainingJobName=config.training_job)
        if job["TrainingJobStatus"] != "Completed":
            raise InputError(f"training job {config.training_job} is {job['TrainingJobStatus']}, not Completed")
        uri = job["ModelArtifacts"]["S3ModelArtifacts"]
        log(f"model_data: {uri} (from training job {config.training_job})")
        return uri
    uri = parse_s3_uri(config.model_data)  # type: ignore[arg-type]
    try:
        s3.head_object(Bucket=uri.bucket, Key=uri.key)
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            raise InputError(f"--model-data {uri.uri} does not exist") from None
        raise
    return uri.uri


def wait_for_endpoint(
    sagemaker: Any, name: str, *, poll_s: float, log: Log = print_line, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    return wait_for_status(
        lambda: sagemaker.describe_endpoint(EndpointName=name),
        "EndpointStatus",
        lambda status: status not in DEPLOYING,
        name="endpoint_status",
        details=lambda d: {"failure_reason": d.get("FailureReason")},
        poll_s=poll_s,
        log=log,
        sleep=sleep,
    )


def check_mode(config: DeployConfig, existing: dict[str, Any] | None) -> None:
    """``--mode`` against what exists: :class:`InputError` before anything is made."""
    if existing is not None and config.mode == "create":
        raise InputError(
            f"endpoint {config.endpoint_name} exists (status {existing['EndpointStatus']}); use "
            "--mode update (or auto), or delete-endpoint first"
        )
    if existing is None and config.mode == "update":
        raise InputError(f"there is no endpoint {config.endpoint_name} to update; use --mode create (or auto)")
    if existing is not None and existing["EndpointStatus"] != "InService":
        raise InputError(
            f"endpoint {config.endpoint_name} is {existing['EndpointStatus']}; only an InService "
            "endpoint can be updated (wait, or delete-endpoint and deploy again)"
        )


def run_deploy(
    config: DeployConfig,
    log: Log = print_line,
    clients: AwsClients | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    if config.model_dir is not None and not config.model_dir.is_dir():
        raise InputError(f"--model-dir {config.model_dir} is not a folder")
    clients = clients or AwsClients.for_command(config)
    sagemaker = clients.client("sagemaker")
    existing = describe_endpoint(sagemaker, config.endpoint_name)
    check_mode(config, existing)
    from binsight_aws.autoscaling import DeployScaling  # imports this module

    scaling = DeployScaling(config, clients, log)
    scaling.check(existing)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    model_name = config.model_name or f"{config.endpoint_name[:47]}-{stamp}"
    config_name = model_name  # models and endpoint configs have separate namespaces; one name ties them
    check_switch(sagemaker, config, existing, log)  # real-time -> serverless refused before anything is made
    model_data = resolve_model_data(config, clients, model_name, log)
    sagemaker.create_model(**model_request(model_name, config, model_data))
    log(f"model: {model_name} image: {config.image_uri} model_data: {model_data}")
    sagemaker.create_endpoint_config(**endpoint_config_request(config_name, model_name, config))
    log(f"endpoint_config: {config_name} {variant_summary(config)}")
    if existing is None:
        sagemaker.create_endpoint(
            EndpointName=config.endpoint_name,
            EndpointConfigName=config_name,
            Tags=[{"Key": "project", "Value": "binsight"}],
        )
        log(f"endpoint: {config.endpoint_name} action: create")
    else:
        keep = scaling.before_update()  # lifts autoscaling a type change breaks, or keeps the scaled count
        sagemaker.update_endpoint(EndpointName=config.endpoint_name, EndpointConfigName=config_name, **keep)
        log(f"endpoint: {config.endpoint_name} action: update previous_config: {existing['EndpointConfigName']}")
    if not config.wait:
        return EXIT_OK
    try:
        description = wait_for_endpoint(sagemaker, config.endpoint_name, poll_s=config.poll_s, log=log, sleep=sleep)
    except KeyboardInterrupt:
        log(
            "detached: the endpoint keeps deploying; check it with: aws sagemaker describe-endpoint "
            f"--endpoint-name {config.endpoint_name}"
        )
        return EXIT_INTERRUPTED
    status = description["EndpointStatus"]
    if status == "InService" and description.get("EndpointConfigName") == config_name:
        log(f"endpoint_ready: {config.endpoint_name} model: {model_name} config: {config_name}")
        log(f"try: binsight-aws invoke --endpoint-name {config.endpoint_name} --images photo.jpg")
        scaling.after_ready()
        return EXIT_OK
    scaling.after_failure()
    reason = description.get("FailureReason") or "the endpoint kept its previous config (the update rolled back)"
    log(f"endpoint_failed: {config.endpoint_name} status: {status} reason: {reason}")
    return EXIT_FAILED


def run_delete(config: DeleteEndpointConfig, log: Log = print_line, clients: AwsClients | None = None) -> int:
    clients = clients or AwsClients.for_command(config)
    sagemaker = clients.client("sagemaker")
    existing = describe_endpoint(sagemaker, config.endpoint_name)
    if existing is None:
        raise InputError(f"there is no endpoint {config.endpoint_name}")
    config_name = existing["EndpointConfigName"]
    models: list[str] = []
    if not config.keep_model:
        try:
            variants = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
            models = [v["ModelName"] for v in variants]
        except ClientError as exc:
            log(f"endpoint_config_unreadable: {config_name} ({error_code(exc)}); its models are kept")
    from binsight_aws.autoscaling import remove_scaling  # imports this module

    remove_scaling(clients.client("application-autoscaling"), config.endpoint_name, log)
    sagemaker.delete_endpoint(EndpointName=config.endpoint_name)
    log(f"deleted_endpoint: {config.endpoint_name}")
    if not config.keep_config:
        sagemaker.delete_endpoint_config(EndpointConfigName=config_name)
        log(f"deleted_endpoint_config: {config_name}")
    for model in models:
        sagemaker.delete_model(ModelName=model)
        log(f"deleted_model: {model}")
    return EXIT_OK


def content_type_for(path: Path, explicit: str | None) -> str:
    return (
        explicit
        or IMAGE_CONTENT_TYPES.get(path.suffix.lower())
        or mimetypes.guess_type(path.name)[0]
        or "application/x-image"
    )


def parse_prediction(body: bytes) -> dict[str, Any]:
    """The first prediction of a serving answer (``{"predictions": [...]}``, one object, or JSON lines)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        try:
            payload = json.loads(text.splitlines()[0]) if text else None
        except json.JSONDecodeError:
            payload = None
    if isinstance(payload, dict) and isinstance(payload.get("predictions"), list) and payload["predictions"]:
        payload = payload["predictions"][0]
    if not isinstance(payload, dict):
        return {"error": f"unexpected answer: {text[:200]!r}"}
    return payload


def format_prediction(prediction: Mapping[str, Any]) -> str:
    if "count" not in prediction:
        return f"error: {prediction.get('error', prediction)}"
    parts = [f"count: {prediction['count']}"]
    for key in ("label", "confidence", "expected_count"):
        if key in prediction:
            value = prediction[key]
            parts.append(f"{key}: {round(value, 4) if isinstance(value, float) else value}")
    return " ".join(parts)


def run_invoke(config: InvokeConfig, log: Log = print_line, clients: AwsClients | None = None) -> int:
    runtime = (clients or AwsClients.for_command(config)).client("sagemaker-runtime")
    failed = 0
    for path in config.images:
        body = path.read_bytes()
        started = time.monotonic()
        response = runtime.invoke_endpoint(
            EndpointName=config.endpoint_name,
            Body=body,
            ContentType=content_type_for(path, config.content_type),
            Accept="application/json",
        )
        prediction = parse_prediction(response["Body"].read())
        failed += "count" not in prediction
        log(f"image: {path} {format_prediction(prediction)} latency_ms: {1000 * (time.monotonic() - started):.0f}")
    return EXIT_FAILED if failed else EXIT_OK
