"""Endpoint autoscaling (Application Auto Scaling) against moto's server, and the checks made before any call.

moto keeps scalable targets and target-tracking policies, so they are described back from the server;
UpdateEndpoint is not in moto, so the update that lifts and restores autoscaling is checked with
botocore's Stubber on the SageMaker side (Application Auto Scaling stays on moto).
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from binsight_aws import autoscaling, endpoint
from binsight_aws.capacity import NoMeasuredCapacity, derived_capacity, vcpus
from binsight_aws.cli import main
from binsight_aws.configs import DeployConfig
from binsight_aws.scaling_options import ScalingOptions
from binsight_aws.session import AwsClients

from aws_support import (  # noqa: F401
    REGION,
    ROLE_ARN,
    SERVE_IMAGE,
    client,
    fake_aws_env,
    moto_endpoint,
    reset_moto,
)

BUCKET = "binsight-scaling"
MODEL_DATA = f"s3://{BUCKET}/m/model.tar.gz"
DEPLOY = ["deploy", "--image-uri", SERVE_IMAGE, "--role-arn", ROLE_ARN, "--model-data", MODEL_DATA, "--poll-s", "0.01"]
RID = "endpoint/bs-scale/variant/AllTraffic"


@pytest.fixture
def aws(moto_endpoint: str) -> str:  # noqa: F811
    reset_moto(moto_endpoint)
    s3 = client("s3", moto_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"x")
    return moto_endpoint


def cli(endpoint_url: str, *argv: str) -> tuple[int, list[str]]:
    lines: list[str] = []
    rc = main([*argv, "--endpoint-url", endpoint_url], log=lines.append)
    return rc, lines


def scaling_of(aws: str) -> tuple[list[dict], list[dict]]:
    aas = client("application-autoscaling", aws)
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    return targets, policies


def test_default_target_follows_the_measured_throughput() -> None:
    assert [vcpus(t) for t in ("ml.m5.large", "ml.c5.xlarge", "ml.c5.9xlarge", "ml.c4.8xlarge", "ml.t2.medium")] == [
        2,
        4,
        36,
        36,
        2,
    ]
    # 35.7 img/s on 2 vCPUs (serve_bench, default model v3, ONNX Runtime fp32, c8) = 17.85 per vCPU, x 60 s x 0.5
    assert derived_capacity("ml.m5.large").target_invocations == 1071.0
    assert derived_capacity("ml.c5.2xlarge").target_invocations == 4284.0
    assert derived_capacity("ml.c5.xlarge", safety_factor=0.25, images_per_request=4).target_invocations == 267.8
    for kind in ("ml.g4dn.xlarge", "ml.inf1.xlarge", "ml.c6g.large", "ml.t3.medium"):
        with pytest.raises(NoMeasuredCapacity, match="--target-invocations"):
            derived_capacity(kind)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-instances", "2", "--min-instances", "3"], "is above --max-instances"),
        (["--max-instances", "0"], "--max-instances: "),
        (["--max-instances", "101"], "--max-instances: "),
        (["--max-instances", "2", "--min-instances", "0"], "--min-instances: "),
        (["--max-instances", "2", "--target-invocations", "0"], "--target-invocations: "),
        (["--max-instances", "2", "--target-invocations", "nan"], "--target-invocations: "),
        (["--max-instances", "2", "--scale-in-cooldown-s", "-1"], "--scale-in-cooldown-s: "),
        (["--max-instances", "2", "--scale-out-cooldown-s", "90000"], "--scale-out-cooldown-s: "),
        (["--max-instances", "2", "--safety-factor", "1.5"], "--safety-factor: "),
        (["--min-instances", "2"], "needs --max-instances"),
        (["--target-invocations", "100"], "needs --max-instances"),
        (["--max-instances", "3", "--no-wait"], "drop --no-wait"),
        (["--max-instances", "3", "--instance-count", "4"], "outside --min-instances"),
        (["--max-instances", "3", "--min-instances", "2"], "outside --min-instances"),  # instance count 1
        (["--max-instances", "3", "--instance-type", "ml.g4dn.xlarge"], "no measured serving throughput"),
        (["--max-instances", "3", "--target-invocations", "500", "--safety-factor", "0.3"], "drop them"),
    ],
)
def test_bad_scaling_values_are_refused_before_any_aws_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    def no_calls(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an AWS client was made for a bad input")

    monkeypatch.setattr(AwsClients, "client", no_calls)
    assert main([*DEPLOY, "--endpoint-name", "bs-scale", *argv]) == 2
    assert message in capsys.readouterr().err


def test_autoscale_refuses_set_and_remove_together(capsys: pytest.CaptureFixture) -> None:
    assert main(["autoscale", "--endpoint-name", "bs-scale", "--max-instances", "2", "--remove"]) == 2
    assert "not both" in capsys.readouterr().err


def test_deploy_with_autoscaling_then_delete_endpoint_removes_it(aws: str) -> None:
    rc, lines = cli(
        aws, *DEPLOY, "--endpoint-name", "bs-scale", "--instance-type", "ml.c5.xlarge", "--max-instances", "4"
    )
    assert rc == 0, lines
    targets, policies = scaling_of(aws)
    assert [(t["ResourceId"], t["ScalableDimension"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [
        (RID, "sagemaker:variant:DesiredInstanceCount", 1, 4)
    ]
    (policy,) = policies
    assert policy["PolicyType"] == "TargetTrackingScaling" and policy["ResourceId"] == RID
    assert policy["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 2142.0,  # 4 vCPUs x 17.85 img/s x 60 s x 0.5
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        "ScaleInCooldown": 300,
        "ScaleOutCooldown": 60,
    }
    assert any(x.startswith("autoscaling_target_derived: 2142 invocations/instance/min") for x in lines)

    rc, lines = cli(aws, "autoscale", "--endpoint-name", "bs-scale")  # show
    assert rc == 0 and lines[0] == "autoscaling: bs-scale min_instances: 1 max_instances: 4", lines
    assert "metric: SageMakerVariantInvocationsPerInstance target: 2142.0" in lines[1]

    rc, lines = cli(aws, "delete-endpoint", "--endpoint-name", "bs-scale")
    assert rc == 0, lines
    assert lines[:2] == [
        "deleted_scaling_policy: binsight-invocations-per-instance",
        f"deregistered_scalable_target: {RID}",
    ]
    assert scaling_of(aws) == ([], [])
    assert client("sagemaker", aws).list_endpoints()["Endpoints"] == []


def test_autoscale_an_existing_endpoint_update_and_remove(aws: str) -> None:
    assert cli(aws, *DEPLOY, "--endpoint-name", "bs-scale", "--instance-count", "2")[0] == 0
    assert scaling_of(aws) == ([], [])
    rc, lines = cli(
        aws,
        "autoscale",
        "--endpoint-name",
        "bs-scale",
        "--max-instances",
        "3",
        "--target-invocations",
        "500",
        "--scale-in-cooldown-s",
        "600",
    )
    assert rc == 0, lines
    assert lines[0].startswith(
        "autoscaling: min_instances: 2 max_instances: 3 target_invocations_per_instance_per_min: 500"
    )
    rc, lines = cli(aws, "autoscale", "--endpoint-name", "bs-scale", "--min-instances", "1", "--max-instances", "6")
    assert rc == 0, lines
    targets, (policy,) = scaling_of(aws)
    assert (targets[0]["MinCapacity"], targets[0]["MaxCapacity"]) == (1, 6)  # registered again: updated in place
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 1071.0  # ml.m5.large, derived
    rc, lines = cli(aws, "autoscale", "--endpoint-name", "bs-scale", "--remove")
    assert rc == 0 and scaling_of(aws) == ([], [])
    rc, lines = cli(aws, "autoscale", "--endpoint-name", "bs-scale", "--remove")
    assert rc == 0 and lines == ["autoscaling: bs-scale none (nothing to remove)"]
    assert cli(aws, "autoscale", "--endpoint-name", "nope", "--max-instances", "2")[0] == 2


def test_type_change_of_an_autoscaled_endpoint_needs_the_scaling_restated(aws: str) -> None:
    assert cli(aws, *DEPLOY, "--endpoint-name", "bs-scale", "--max-instances", "2")[0] == 0
    models = len(client("sagemaker", aws).list_models()["Models"])
    rc, _ = cli(aws, *DEPLOY, "--endpoint-name", "bs-scale", "--instance-type", "ml.c5.xlarge")
    assert rc == 2  # SageMaker would refuse the update: stopped before a model was made
    assert len(client("sagemaker", aws).list_models()["Models"]) == models


class MixedClients(AwsClients):
    """A stubbed SageMaker client; every other service from moto."""

    def __init__(self, sagemaker: Any, aws: str) -> None:
        super().__init__(region=REGION, endpoint_url=aws)
        self.sagemaker = sagemaker

    def client(self, service: str, **kwargs: Any) -> Any:
        return self.sagemaker if service == "sagemaker" else super().client(service, **kwargs)


def stub_update(stub: Stubber, final_config: str, retain: bool = False) -> None:
    """An update of bs-scale (on ml.m5.large) as the Stubber sees it; ``retain``: RetainAllVariantProperties."""
    arn = "arn:aws:sagemaker:us-east-1:123456789012:endpoint/bs-scale"
    described = {
        "EndpointName": "bs-scale",
        "EndpointArn": arn,
        "EndpointConfigName": "bs-scale-old",
        "EndpointStatus": "InService",
        "CreationTime": 0,
        "LastModifiedTime": 0,
    }
    old_variant = {"VariantName": "AllTraffic", "ModelName": "old", "InstanceType": "ml.m5.large"}
    stub.add_response("describe_endpoint", described, {"EndpointName": "bs-scale"})
    stub.add_response(
        "describe_endpoint_config",
        {
            "EndpointConfigName": "bs-scale-old",
            "EndpointConfigArn": arn + "-config",
            "ProductionVariants": [old_variant],
            "CreationTime": 0,
        },
        {"EndpointConfigName": "bs-scale-old"},
    )
    stub.add_response("create_model", {"ModelArn": arn + "-model"}, ANY_MODEL)
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": arn + "-config"}, ANY_CONFIG)
    update = {"EndpointName": "bs-scale", "EndpointConfigName": ANY}
    if retain:
        update["RetainAllVariantProperties"] = True
    stub.add_response("update_endpoint", {"EndpointArn": arn}, update)
    stub.add_response("describe_endpoint", {**described, "EndpointConfigName": final_config}, {"EndpointName": ANY})


ANY_MODEL = {"ModelName": ANY, "ExecutionRoleArn": ANY, "PrimaryContainer": ANY, "Tags": ANY}
ANY_CONFIG = {"EndpointConfigName": ANY, "ProductionVariants": ANY, "Tags": ANY}


@pytest.mark.parametrize("rolled_back", [False, True])
def test_type_change_lifts_autoscaling_and_restores_it_on_rollback(aws: str, rolled_back: bool) -> None:
    aas = client("application-autoscaling", aws)
    old = ScalingOptions(max_instances=3, target_invocations=700).scaling_plan("ml.m5.large", 1)
    autoscaling.apply_scaling(aas, "bs-scale", old, lambda _: None)
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    stub = Stubber(sagemaker)
    stub_update(stub, "bs-scale-old" if rolled_back else "bs-scale-new")
    config = DeployConfig(
        image_uri=SERVE_IMAGE,
        role_arn=ROLE_ARN,
        endpoint_name="bs-scale",
        model_data=MODEL_DATA,
        model_name="bs-scale-new",
        instance_type="ml.c5.2xlarge",
        max_instances=5,
        poll_s=1,
    )
    lines: list[str] = []
    with stub:
        rc = endpoint.run_deploy(config, lines.append, MixedClients(sagemaker, aws), sleep=lambda _: None)
    stub.assert_no_pending_responses()
    assert f"deregistered_scalable_target: {RID}" in lines
    targets, (policy,) = scaling_of(aws)
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    if rolled_back:  # back on ml.m5.large: the old range and target
        assert rc == 1 and any(x.startswith("autoscaling_restored: bs-scale") for x in lines)
        assert (targets[0]["MaxCapacity"], tracking["TargetValue"]) == (3, 700.0)
    else:  # the new type's range and derived target (8 vCPUs)
        assert rc == 0
        assert (targets[0]["MaxCapacity"], tracking["TargetValue"]) == (5, 4284.0)


@pytest.mark.parametrize("count_given", [False, True])
def test_a_model_update_keeps_autoscaling_and_the_scaled_count(aws: str, count_given: bool) -> None:
    """Same instance type: the autoscaling stays, and so does the count it scaled to unless --instance-count says."""
    aas = client("application-autoscaling", aws)
    autoscaling.apply_scaling(
        aas, "bs-scale", ScalingOptions(max_instances=4).scaling_plan("ml.m5.large", 1), lambda _: None
    )
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    stub = Stubber(sagemaker)
    stub_update(stub, "bs-scale-new", retain=not count_given)
    extra = {"instance_count": 2} if count_given else {}
    config = DeployConfig(
        image_uri=SERVE_IMAGE,
        role_arn=ROLE_ARN,
        endpoint_name="bs-scale",
        model_data=MODEL_DATA,
        model_name="bs-scale-new",
        poll_s=1,
        **extra,
    )
    lines: list[str] = []
    with stub:
        rc = endpoint.run_deploy(config, lines.append, MixedClients(sagemaker, aws), sleep=lambda _: None)
    stub.assert_no_pending_responses()
    assert rc == 0 and "autoscaling_found: bs-scale min_instances: 1 max_instances: 4 action: keep" in lines
    assert scaling_of(aws)[0][0]["MaxCapacity"] == 4  # untouched
