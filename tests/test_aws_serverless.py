"""``deploy --serverless`` against moto's server: the serverless endpoint config described back, the body limit
set through the container's environment, bad values refused before any AWS call, and the switches between
real-time and serverless that SageMaker allows (and the one it does not)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.validate import ParamValidator

from binsight_aws import endpoint as endpoint_ops
from binsight_aws.cli import main
from binsight_aws.configs import DeployConfig
from binsight_aws.serverless import DEFAULT_MAX_CONCURRENCY, DEFAULT_MEMORY_MB, PAYLOAD_ENV, memory_size_for
from binsight_aws.session import AwsClients

from aws_support import REGION, ROLE_ARN, SERVE_IMAGE, client, fake_aws_env, moto_endpoint, reset_moto  # noqa: F401

BUCKET = "binsight-serverless"
MODEL_DATA = f"s3://{BUCKET}/m/model.tar.gz"
BASE = ["--image-uri", SERVE_IMAGE, "--role-arn", ROLE_ARN, "--model-data", MODEL_DATA, "--poll-s", "0.01"]


@pytest.fixture
def aws(moto_endpoint: str) -> str:  # noqa: F811
    reset_moto(moto_endpoint)
    s3 = client("s3", moto_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"model")
    return moto_endpoint


def deploy(endpoint: str, *argv: str) -> tuple[int, list[str]]:
    lines: list[str] = []
    return main(["deploy", *BASE, *argv, "--endpoint-url", endpoint], log=lines.append), lines


def assert_valid(operation: str, params: dict[str, Any]) -> None:
    shape = boto3.client("sagemaker", region_name=REGION).meta.service_model.operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()


def test_serverless_deploy_described_back_then_deleted(aws: str) -> None:
    rc, lines = deploy(
        aws,
        "--serverless",
        "--endpoint-name",
        "bs-sls",
        "--model-name",
        "bs-sls-1",
        "--memory-size-mb",
        "3072",
        "--max-concurrency",
        "20",
        "--provisioned-concurrency",
        "2",
    )
    assert rc == 0, lines
    sm = client("sagemaker", aws)
    ep = sm.describe_endpoint(EndpointName="bs-sls")
    wanted = {"MemorySizeInMB": 3072, "MaxConcurrency": 20, "ProvisionedConcurrency": 2}
    assert ep["EndpointStatus"] == "InService"
    assert ep["ProductionVariants"][0]["CurrentServerlessConfig"] == wanted
    variant = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == wanted and "InstanceType" not in variant
    model = sm.describe_model(ModelName="bs-sls-1")["PrimaryContainer"]
    assert (model["Image"], model["ModelDataUrl"]) == (SERVE_IMAGE, MODEL_DATA)  # the same image and archive
    assert model["Environment"] == {PAYLOAD_ENV: "4", "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    assert any("serverless: memory_size_mb: 3072 max_concurrency: 20 provisioned_concurrency: 2" in x for x in lines)

    rc = main(["delete-endpoint", "--endpoint-name", "bs-sls", "--endpoint-url", aws], log=lambda _: None)
    assert rc == 0
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []


def test_serverless_requests_match_the_service_model() -> None:
    config = DeployConfig(
        image_uri=SERVE_IMAGE, role_arn=ROLE_ARN, model_data=MODEL_DATA, serverless=True, env={"A": "b"}
    )
    assert (config.memory_size_mb, config.max_concurrency) == (DEFAULT_MEMORY_MB, DEFAULT_MAX_CONCURRENCY)
    request = endpoint_ops.endpoint_config_request("c", "m", config)
    assert request["ProductionVariants"][0]["ServerlessConfig"] == {
        "MemorySizeInMB": DEFAULT_MEMORY_MB,
        "MaxConcurrency": DEFAULT_MAX_CONCURRENCY,
    }
    assert_valid("CreateEndpointConfig", request)
    model = endpoint_ops.model_request("m", config, MODEL_DATA)
    assert model["PrimaryContainer"]["Environment"]["A"] == "b"
    assert_valid("CreateModel", model)
    # a real-time deploy is what it was: no serverless config, no extra environment
    realtime = DeployConfig(image_uri=SERVE_IMAGE, role_arn=ROLE_ARN, model_data=MODEL_DATA)
    variant = endpoint_ops.endpoint_config_request("c", "m", realtime)["ProductionVariants"][0]
    assert "ServerlessConfig" not in variant and variant["InstanceType"] == "ml.m5.large"
    assert "Environment" not in endpoint_ops.model_request("m", realtime, MODEL_DATA)["PrimaryContainer"]


def test_default_memory_is_the_measured_peak_with_headroom() -> None:
    assert memory_size_for(600) == 1024  # 900 MB needed
    assert memory_size_for(700) == 2048  # 1050 MB needed
    assert memory_size_for(5000) == 6144  # capped at the largest size
    assert DEFAULT_MEMORY_MB in (1024, 2048, 3072, 4096, 5120, 6144)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--serverless", "--memory-size-mb", "1500"], "serverless memory is one of 1024, 2048"),
        (["--serverless", "--memory-size-mb", "8192"], "serverless memory is one of"),
        (["--serverless", "--memory-size-mb", "512"], "serverless memory is one of"),
        (["--serverless", "--max-concurrency", "0"], "serverless concurrency is 1-200"),
        (["--serverless", "--max-concurrency", "201"], "serverless concurrency is 1-200"),
        (["--serverless", "--max-concurrency", "4", "--provisioned-concurrency", "5"], "must be 1..--max-concurrency"),
        (["--serverless", "--provisioned-concurrency", "0"], "must be 1..--max-concurrency"),
        (["--memory-size-mb", "2048"], "--memory-size-mb applies to --serverless deployments only"),
        (["--serverless", "--instance-type", "ml.c5.xlarge"], "--instance-type applies to instance-based endpoints"),
        (["--serverless", "--max-instances", "3"], "--max-instances applies to instance-based endpoints"),
        (["--serverless", "--env", f"{PAYLOAD_ENV}=6"], "takes request bodies up to 4 MB"),
    ],
)
def test_bad_serverless_values_are_refused_before_any_aws_call(extra, message, capsys) -> None:
    # nothing listens on port 9: a call that got sent would fail with a connection error (exit 1), not 2
    rc = main(["deploy", *BASE, *extra, "--endpoint-url", "http://127.0.0.1:9"], log=lambda _: None)
    assert rc == 2
    assert message in capsys.readouterr().err


def test_real_time_to_serverless_is_refused_with_the_way_out(aws: str, capsys) -> None:
    rc, lines = deploy(aws, "--endpoint-name", "bs-rt", "--model-name", "bs-rt-1")
    assert rc == 0, lines
    sm = client("sagemaker", aws)
    before = len(sm.list_models()["Models"])
    rc, _ = deploy(aws, "--endpoint-name", "bs-rt", "--serverless")
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot update a real-time endpoint to a serverless one" in err and "delete-endpoint" in err
    assert len(sm.list_models()["Models"]) == before  # nothing was made


class UpdateRecorder:
    """moto's SageMaker client, with UpdateEndpoint (not in moto) recorded and checked against the service model."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.updates = inner, []

    def update_endpoint(self, **params: Any) -> dict[str, Any]:
        assert_valid("UpdateEndpoint", params)
        self.updates.append(params)
        return {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/x"}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RecordingClients(AwsClients):
    def __init__(self, endpoint: str) -> None:
        super().__init__(region=REGION, endpoint_url=endpoint)
        self.recorder: UpdateRecorder | None = None

    def client(self, service: str, **kwargs: Any) -> Any:
        inner = super().client(service, **kwargs)
        if service != "sagemaker":
            return inner
        self.recorder = self.recorder or UpdateRecorder(inner)
        return self.recorder


@pytest.mark.parametrize("target", ["serverless", "real-time"])
def test_serverless_endpoint_updates_to_serverless_or_real_time(aws: str, target: str) -> None:
    rc, lines = deploy(aws, "--serverless", "--endpoint-name", "bs-up", "--model-name", "bs-up-1")
    assert rc == 0, lines
    extra = {"serverless": True, "memory_size_mb": 4096} if target == "serverless" else {"instance_count": 1}
    config = DeployConfig(
        image_uri=SERVE_IMAGE,
        role_arn=ROLE_ARN,
        model_data=MODEL_DATA,
        endpoint_name="bs-up",
        model_name="bs-up-2",
        wait=False,
        **extra,
    )
    clients = RecordingClients(aws)
    lines = []
    assert endpoint_ops.run_deploy(config, lines.append, clients) == 0, lines
    assert f"endpoint_update: bs-up from: serverless to: {target}" in lines
    assert clients.recorder.updates == [{"EndpointName": "bs-up", "EndpointConfigName": "bs-up-2"}]
    variant = client("sagemaker", aws).describe_endpoint_config(EndpointConfigName="bs-up-2")["ProductionVariants"][0]
    if target == "serverless":
        assert variant["ServerlessConfig"]["MemorySizeInMB"] == 4096
    else:
        assert "ServerlessConfig" not in variant and variant["InstanceType"] == "ml.m5.large"
