"""``deploy-lambda`` and ``delete-lambda``: the counting Lambda function, its S3 trigger, Function URL and role.

deploy-lambda, in order (each step logged as ``key: value``):

1. the served model's ``model.json`` (``--model-json``, else streamed out of the endpoint's model.tar.gz: the
   function needs its labels and manual-check thresholds; the endpoint answers counts only);
2. the zip (:mod:`binsight_aws.lambda_package`; no torch);
3. the execution role, unless ``--role-arn``: ``<function>-role``, trusted by Lambda only, with one inline policy
   (:func:`role_policy`): InvokeEndpoint on that one endpoint, GetObject under the input prefix, GetObject and
   PutObject under the results prefix, ListBucket limited to the results prefix, and its own log group;
4. the function (created, or its code and configuration updated), with bounded async retries
   (PutFunctionEventInvokeConfig) so a failing event is not retried for hours;
5. the S3 trigger (an ObjectCreated notification on the input prefix, merged into the bucket's others);
6. the Function URL: AWS_IAM auth unless ``--url-auth NONE`` (then a public-invoke permission and a warning).

delete-lambda undoes all of it: the bucket's notification entry, the URL, the function, and the role if
deploy-lambda made it (tagged ``binsight:created-by``).
"""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from binsight_aws.lambda_configs import DeleteLambdaConfig, DeployLambdaConfig
from binsight_aws.lambda_fn.settings import ENV_PREFIX
from binsight_aws.lambda_package import HANDLER, RUNTIME, build_zip
from binsight_aws.serverless import PAYLOAD_LIMIT_MB
from binsight_aws.session import AwsClients
from binsight_aws.validate import InputError, error_code, parse_s3_uri
from training.log import Log, print_line

EXIT_OK = 0
POLICY_NAME = "binsight-lambda"
CREATED_BY_TAG = "binsight:created-by"
REAL_TIME_PAYLOAD_MB = 6
#: Key under which served_model keeps the serving container's environment in the endpoint description.
CONTAINER_ENV = "binsight:ContainerEnvironment"
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def notification_id(function_name: str) -> str:
    return f"binsight-{function_name}"


def role_name(function_name: str) -> str:
    return f"{function_name}-role"[:64]


def role_policy(
    config: DeployLambdaConfig, *, partition: str, region: str, account: str, endpoint_arn: str | None
) -> dict[str, Any]:
    """The execution role's only policy: what the function does, on what it does it, nothing else."""
    bucket = f"arn:{partition}:s3:::{config.bucket}"
    log_group = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{config.function_name}"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadPhotos",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"{bucket}/{config.input_prefix}*",
        },
        {
            "Sid": "ReadWriteResults",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": f"{bucket}/{config.results_prefix}*",
        },
        {
            # the duplicate check lists the one result key: a missing result then reads as missing (not 403)
            "Sid": "ListResults",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": f"{config.results_prefix}*"}},
        },
        {"Sid": "LogGroup", "Effect": "Allow", "Action": "logs:CreateLogGroup", "Resource": log_group},
        {
            "Sid": "LogEvents",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": f"{log_group}:*",
        },
    ]
    if endpoint_arn is not None:
        statements.insert(
            0,
            {
                "Sid": "InvokeEndpoint",
                "Effect": "Allow",
                "Action": "sagemaker:InvokeEndpoint",
                "Resource": endpoint_arn,
            },
        )
    return {"Version": "2012-10-17", "Statement": statements}


# ------------------------------------------------------------------------------------------------ model


def model_json_from_archive(s3: Any, model_data: str) -> bytes:
    """``model.json`` streamed out of a model.tar.gz in S3 (it stops reading once found)."""
    uri = parse_s3_uri(model_data, need_key=True)
    body = s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"]
    with tarfile.open(fileobj=body, mode="r|gz") as archive:
        for member in archive:
            if member.isfile() and member.name.lstrip("./") == "model.json":
                handle = archive.extractfile(member)
                if handle is not None:
                    return handle.read()
    raise InputError(f"{model_data} holds no model.json at its root (package-model makes one that does)")


def served_model(config: DeployLambdaConfig, clients: AwsClients, log: Log) -> tuple[bytes | None, dict[str, Any]]:
    """(model.json bytes or None, the endpoint's description or {}), checked to be a binsight model.json."""
    from service.model_metadata import ModelMetadata

    endpoint: dict[str, Any] = {}
    raw: bytes | None = config.model_json.read_bytes() if config.model_json else None
    if config.endpoint_name is not None:
        sagemaker = clients.client("sagemaker")
        try:
            endpoint = sagemaker.describe_endpoint(EndpointName=config.endpoint_name)
        except ClientError as exc:
            if error_code(exc) == "ValidationException":
                raise InputError(f"there is no endpoint {config.endpoint_name} (deploy it first)") from None
            raise
        variant = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])[
            "ProductionVariants"
        ][0]
        container = sagemaker.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
        # the serving container's own settings (manual-check thresholds, body limit) are the function's defaults
        endpoint[CONTAINER_ENV] = container.get("Environment") or {}
        if raw is None:
            raw = model_json_from_archive(clients.client("s3"), container["ModelDataUrl"])
            log(f"model_json: from {container['ModelDataUrl']}")
    if raw is not None:
        try:
            metadata = ModelMetadata.model_validate_json(raw)
        except ValueError as exc:
            raise InputError(f"model.json is not valid: {str(exc).splitlines()[0]}") from None
        log(f"model: architecture: {metadata.architecture} labels: {','.join(metadata.labels)}")
    return raw, endpoint


def is_serverless(endpoint: dict[str, Any]) -> bool:
    return any(
        "CurrentServerlessConfig" in v or "DesiredServerlessConfig" in v for v in endpoint.get("ProductionVariants", [])
    )


def _container_value(endpoint: dict[str, Any], name: str) -> float | None:
    try:
        return float(endpoint.get(CONTAINER_ENV, {})[name])
    except (KeyError, ValueError):
        return None


def function_environment(config: DeployLambdaConfig, endpoint: dict[str, Any]) -> dict[str, str]:
    """The function's BINSIGHT_LAMBDA_* variables; thresholds and body limit default to the endpoint's own, so the
    URL answers what the endpoint's /predict would."""
    payload = (
        config.max_payload_mb
        or _container_value(endpoint, "SAGEMAKER_MAX_PAYLOAD_IN_MB")
        or (PAYLOAD_LIMIT_MB if is_serverless(endpoint) else REAL_TIME_PAYLOAD_MB)
    )
    confidence, expected = config.manual_check_confidence, config.manual_check_expected_probability
    if confidence is None:
        confidence = _container_value(endpoint, "BINSIGHT_MANUAL_CHECK_CONFIDENCE")
    if expected is None:
        expected = _container_value(endpoint, "BINSIGHT_MANUAL_CHECK_EXPECTED_PROBABILITY")
    values: dict[str, Any] = {
        "endpoint_name": config.endpoint_name,
        "invocations_url": config.invocations_url,
        "bucket": config.bucket,
        "input_prefix": config.input_prefix,
        "results_prefix": config.results_prefix,
        "max_payload_mb": payload,
        "timeout_s": max(1, config.timeout_s - 5),
        "manual_check_confidence": confidence,
        "manual_check_expected_probability": expected,
    }
    return {
        ENV_PREFIX + k.upper(): f"{v:g}" if isinstance(v, float) else str(v) for k, v in values.items() if v is not None
    }


# ------------------------------------------------------------------------------------------------ role


def ensure_role(
    config: DeployLambdaConfig, clients: AwsClients, endpoint: dict[str, Any], account: str, log: Log
) -> str:
    if config.role_arn is not None:
        log(f"role: {config.role_arn} (given; its policy is yours to keep least-privilege)")
        return config.role_arn
    iam = clients.client("iam")
    name = role_name(config.function_name)
    try:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
        action = "reused"
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        arn = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description=f"binsight Lambda function {config.function_name} (deploy-lambda)",
            Tags=[{"Key": CREATED_BY_TAG, "Value": "deploy-lambda"}, {"Key": "project", "Value": "binsight"}],
        )["Role"]["Arn"]
        action = "created"
    partition = arn.split(":")[1]
    policy = role_policy(
        config,
        partition=partition,
        region=clients.resolved_region(),
        account=account,
        endpoint_arn=endpoint.get("EndpointArn"),
    )
    iam.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
    log(f"role: {arn} action: {action} policy: {POLICY_NAME} statements: {len(policy['Statement'])}")
    return arn


# ------------------------------------------------------------------------------------------------ function


def _retry_role_propagation(call: Callable[[], Any], sleep: Callable[[float], None], attempts: int = 10) -> Any:
    """A role just created takes a few seconds before Lambda may assume it."""
    for attempt in range(attempts):
        try:
            return call()
        except ClientError as exc:
            message = str(exc.response.get("Error", {}).get("Message", ""))
            if "cannot be assumed" not in message or attempt == attempts - 1:
                raise
            sleep(3.0)
    raise AssertionError("unreachable")


def ensure_function(
    config: DeployLambdaConfig,
    lam: Any,
    code: bytes,
    role_arn: str,
    environment: dict[str, str],
    log: Log,
    sleep: Callable[[float], None],
) -> str:
    settings = {
        "Role": role_arn,
        "Handler": HANDLER,
        "Runtime": RUNTIME,
        "Timeout": config.timeout_s,
        "MemorySize": config.memory_mb,
        "Environment": {"Variables": environment},
        "Description": "binsight: counts bin photos through a model endpoint",
    }
    try:
        lam.get_function_configuration(FunctionName=config.function_name)
        exists = True
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        exists = False
    if exists:
        lam.update_function_code(FunctionName=config.function_name, ZipFile=code)
        _wait_updated(lam, config.function_name, sleep)
        arn = lam.update_function_configuration(FunctionName=config.function_name, **settings)["FunctionArn"]
        action = "updated"
    else:
        arn = _retry_role_propagation(
            lambda: lam.create_function(
                FunctionName=config.function_name,
                Code={"ZipFile": code},
                Architectures=["x86_64"],
                Tags={"project": "binsight"},
                **settings,
            )["FunctionArn"],
            sleep,
        )
        action = "created"
    log(f"function: {arn} action: {action} zip_bytes: {len(code)} runtime: {RUNTIME} handler: {HANDLER}")
    if config.wait:
        _wait_updated(lam, config.function_name, sleep)
    lam.put_function_event_invoke_config(
        FunctionName=config.function_name,
        MaximumRetryAttempts=config.max_retry_attempts,
        MaximumEventAgeInSeconds=config.max_event_age_s,
    )
    log(f"async_retries: {config.max_retry_attempts} max_event_age_s: {config.max_event_age_s}")
    return arn


def _wait_updated(lam: Any, name: str, sleep: Callable[[float], None], limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        state = lam.get_function_configuration(FunctionName=name)
        if state.get("State", "Active") != "Pending" and state.get("LastUpdateStatus", "Successful") != "InProgress":
            if state.get("State") == "Failed" or state.get("LastUpdateStatus") == "Failed":
                raise RuntimeError(
                    f"function {name} failed: {state.get('StateReason') or state.get('LastUpdateStatusReason')}"
                )
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"function {name} still not ready after {limit_s:g} s")
        sleep(2.0)


def _add_permission(lam: Any, name: str, statement_id: str, **permission: Any) -> None:
    try:
        lam.remove_permission(FunctionName=name, StatementId=statement_id)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
    lam.add_permission(FunctionName=name, StatementId=statement_id, **permission)


def ensure_trigger(config: DeployLambdaConfig, clients: AwsClients, function_arn: str, account: str, log: Log) -> None:
    lam, s3 = clients.client("lambda"), clients.client("s3")
    _add_permission(
        lam,
        config.function_name,
        "binsight-s3-trigger",
        Action="lambda:InvokeFunction",
        Principal="s3.amazonaws.com",
        SourceArn=f"arn:aws:s3:::{config.bucket}",
        SourceAccount=account,
    )
    current = s3.get_bucket_notification_configuration(Bucket=config.bucket)
    current.pop("ResponseMetadata", None)
    ours = notification_id(config.function_name)
    others = [c for c in current.get("LambdaFunctionConfigurations", []) if c.get("Id") != ours]
    current["LambdaFunctionConfigurations"] = [
        *others,
        {
            "Id": ours,
            "LambdaFunctionArn": function_arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": config.input_prefix}]}},
        },
    ]
    s3.put_bucket_notification_configuration(Bucket=config.bucket, NotificationConfiguration=current)
    log(
        f"trigger: s3://{config.bucket}/{config.input_prefix} -> s3://{config.bucket}/{config.results_prefix} "
        f"notification: {ours}"
    )


def ensure_url(config: DeployLambdaConfig, lam: Any, log: Log) -> str:
    try:
        url = lam.get_function_url_config(FunctionName=config.function_name)["FunctionUrl"]
        lam.update_function_url_config(FunctionName=config.function_name, AuthType=config.url_auth)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        url = lam.create_function_url_config(FunctionName=config.function_name, AuthType=config.url_auth)["FunctionUrl"]
    if config.url_auth == "NONE":
        _add_permission(
            lam,
            config.function_name,
            "binsight-url-public",
            Action="lambda:InvokeFunctionUrl",
            Principal="*",
            FunctionUrlAuthType="NONE",
        )
        log(
            "warning: the Function URL takes requests from anyone on the internet (--url-auth NONE); every "
            "request is a paid model call. Keep AWS_IAM unless something in front of it authenticates callers."
        )
    else:
        try:
            lam.remove_permission(FunctionName=config.function_name, StatementId="binsight-url-public")
        except ClientError:
            pass
    log(f"function_url: {url} auth: {config.url_auth}")
    return url


def run_deploy(
    config: DeployLambdaConfig,
    log: Log = print_line,
    clients: AwsClients | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    clients = clients or AwsClients.for_command(config)
    model_json, endpoint = served_model(config, clients, log)
    code = build_zip(model_json, config.dependencies_dir)
    if config.zip_output is not None:
        Path(config.zip_output).write_bytes(code)
        log(f"zip: {config.zip_output} bytes: {len(code)}")
    account = clients.client("sts").get_caller_identity()["Account"]
    role_arn = ensure_role(config, clients, endpoint, account, log)
    lam = clients.client("lambda")
    function_arn = ensure_function(config, lam, code, role_arn, function_environment(config, endpoint), log, sleep)
    if config.trigger:
        ensure_trigger(config, clients, function_arn, account, log)
    if config.function_url:
        ensure_url(config, lam, log)
    log(f"deployed: {config.function_name} model: {config.endpoint_name or config.invocations_url}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ delete


def run_delete(config: DeleteLambdaConfig, log: Log = print_line, clients: AwsClients | None = None) -> int:
    clients = clients or AwsClients.for_command(config)
    lam = clients.client("lambda")
    try:
        function = lam.get_function_configuration(FunctionName=config.function_name)
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            raise InputError(f"there is no function {config.function_name}") from None
        raise
    bucket = (function.get("Environment") or {}).get("Variables", {}).get(ENV_PREFIX + "BUCKET")
    if bucket:
        s3 = clients.client("s3")
        current = s3.get_bucket_notification_configuration(Bucket=bucket)
        current.pop("ResponseMetadata", None)
        kept = [
            c
            for c in current.get("LambdaFunctionConfigurations", [])
            if c.get("Id") != notification_id(config.function_name)
        ]
        if len(kept) != len(current.get("LambdaFunctionConfigurations", [])):
            current["LambdaFunctionConfigurations"] = kept
            s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=current)
            log(f"deleted_trigger: s3://{bucket} notification: {notification_id(config.function_name)}")
    try:
        lam.delete_function_url_config(FunctionName=config.function_name)
        log(f"deleted_function_url: {config.function_name}")
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
    lam.delete_function(FunctionName=config.function_name)
    log(f"deleted_function: {config.function_name}")
    role = function["Role"].rsplit("/", 1)[-1]
    if not config.keep_role:
        iam = clients.client("iam")
        try:
            tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=role).get("Tags", [])}
        except ClientError:
            tags = {}
        if tags.get(CREATED_BY_TAG) == "deploy-lambda":
            for policy in iam.list_role_policies(RoleName=role).get("PolicyNames", []):
                iam.delete_role_policy(RoleName=role, PolicyName=policy)
            iam.delete_role(RoleName=role)
            log(f"deleted_role: {role}")
        else:
            log(f"kept_role: {role} (not made by deploy-lambda)")
    return EXIT_OK
