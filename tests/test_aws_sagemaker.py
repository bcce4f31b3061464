"""S3 channels, ECR, SageMaker jobs and endpoints against moto's server on loopback.

Requests are described back from the server. Where moto lacks an API (UpdateEndpoint) or answers
with canned values (job status, billable time), botocore's Stubber checks our requests against
the service model instead; every request builder is also validated against that model.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from botocore.validate import ParamValidator

from binsight_aws import endpoint as endpoint_ops
from binsight_aws.cli import main
from binsight_aws.configs import (
    BatchTransformConfig,
    DeployConfig,
    InvokeConfig,
    TrainingJobConfig,
    TuningJobConfig,
)
from binsight_aws.model_package import check_archive
from binsight_aws.session import AwsClients
from binsight_aws.training_job import METRIC_REGEXES, report, training_job_request
from binsight_aws.training_job import run as run_training
from binsight_aws.transform import transform_request
from binsight_aws.tuning import tuning_job_request

from aws_support import (  # noqa: F401
    REGION,
    ROLE_ARN,
    SERVE_IMAGE,
    TRAIN_IMAGE,
    client,
    fake_aws_env,
    jpeg_bytes,
    moto_endpoint,
    reset_moto,
)

BUCKET = "binsight-test"


@pytest.fixture
def aws(moto_endpoint: str):  # noqa: F811
    reset_moto(moto_endpoint)
    s3 = client("s3", moto_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    return moto_endpoint


def cli(endpoint: str, *argv: str) -> tuple[int, list[str]]:
    lines: list[str] = []
    rc = main([*argv, "--endpoint-url", endpoint], log=lines.append)
    return rc, lines


def assert_valid(service: str, operation: str, params: dict[str, Any]) -> None:
    """``params`` satisfies the botocore service model of ``operation``."""
    sm = boto3.client(service, region_name=REGION)
    shape = sm.meta.service_model.operation_model(operation).input_shape
    report_ = ParamValidator().validate(params, shape)
    assert not report_.has_errors(), report_.generate_report()


class FixedClients(AwsClients):
    """AwsClients handing out given clients (a stubbed one, a moto one)."""

    def __init__(self, clients: dict[str, Any]) -> None:
        super().__init__(region=REGION)
        self.fixed = clients

    def client(self, service: str, **kwargs: Any) -> Any:
        return self.fixed[service]


JOB_ARGS = [
    "--image-uri",
    TRAIN_IMAGE,
    "--role-arn",
    ROLE_ARN,
    "--train-uri",
    f"s3://{BUCKET}/data/train",
    "--validation-uri",
    f"s3://{BUCKET}/data/validation",
    "--output-uri",
    f"s3://{BUCKET}/output",
]


# ------------------------------------------------------------------------------------------------
# S3 channels
# ------------------------------------------------------------------------------------------------


def make_dataset(root: Path) -> None:
    for part, ids in (("train", ["1", "2", "3"]), ("val", ["4"])):
        (root / part / "bin-images").mkdir(parents=True)
        (root / part / "metadata").mkdir(parents=True)
        for i in ids:
            (root / part / "bin-images" / f"{i}.jpg").write_bytes(jpeg_bytes(int(i)))
            (root / part / "metadata" / f"{i}.json").write_text(json.dumps({"EXPECTED_QUANTITY": int(i)}))
    (root / "train" / ".binsight-download.json").write_text("{}")  # hidden: not uploaded


def test_upload_dataset_channels_and_skip_unchanged(aws, tmp_path) -> None:
    make_dataset(tmp_path / "ds")
    rc, lines = cli(aws, "upload-dataset", "--source", str(tmp_path / "ds"), "--s3-uri", f"s3://{BUCKET}/data")
    assert rc == 0, lines
    assert "upload_summary: files: 8 uploaded: 8 unchanged: 0 failed: 0 remote_only: 0" in lines
    assert f"channel_uri: validation s3://{BUCKET}/data/validation/" in lines  # val/ -> validation channel
    s3 = client("s3", aws)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert "data/train/bin-images/1.jpg" in keys and "data/validation/metadata/4.json" in keys
    assert not any(".binsight" in k for k in keys)
    assert s3.head_object(Bucket=BUCKET, Key="data/train/bin-images/1.jpg")["ContentType"] == "image/jpeg"
    # second run: nothing changed, nothing sent; then one changed file is sent again
    (tmp_path / "ds" / "train" / "metadata" / "2.json").write_text('{"EXPECTED_QUANTITY": 20}')
    rc, lines = cli(aws, "upload-dataset", "--source", str(tmp_path / "ds"), "--s3-uri", f"s3://{BUCKET}/data")
    assert "upload_summary: files: 8 uploaded: 1 unchanged: 7 failed: 0 remote_only: 0" in lines
    body = s3.get_object(Bucket=BUCKET, Key="data/train/metadata/2.json")["Body"].read()
    assert json.loads(body) == {"EXPECTED_QUANTITY": 20}
    # a folder without channel subfolders is the train channel; stale remote objects are reported
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(jpeg_bytes(9))
    rc, lines = cli(aws, "upload-dataset", "--source", str(tmp_path / "flat"), "--s3-uri", f"s3://{BUCKET}/data")
    assert rc == 0 and "remote_only: 6" in next(x for x in lines if x.startswith("upload_summary"))


def test_upload_explicit_channels_dry_run(aws, tmp_path) -> None:
    make_dataset(tmp_path / "ds")
    rc, lines = cli(
        aws,
        "upload-dataset",
        "--source",
        str(tmp_path / "ds"),
        "--s3-uri",
        f"s3://{BUCKET}/x",
        "--channel",
        "train=train",
        "--channel",
        "test=val",
        "--dry-run",
    )
    assert rc == 0, lines
    assert any(
        x.startswith("upload_channel: test folder: ") and x.endswith(f"uri: s3://{BUCKET}/x/test/") for x in lines
    )
    assert "upload_dry_run: to_upload: 8 unchanged: 0" in lines
    assert "Contents" not in client("s3", aws).list_objects_v2(Bucket=BUCKET, Prefix="x/")  # nothing sent


def test_multipart_etag_matches_s3(aws, tmp_path) -> None:
    from binsight_aws.upload import MULTIPART_CHUNK, s3_etag

    big = tmp_path / "big" / "train"
    big.mkdir(parents=True)
    (big / "blob.bin").write_bytes(os.urandom(MULTIPART_CHUNK + 1000))
    assert cli(aws, "upload-dataset", "--source", str(tmp_path / "big"), "--s3-uri", f"s3://{BUCKET}/big")[0] == 0
    etag = client("s3", aws).head_object(Bucket=BUCKET, Key="big/train/blob.bin")["ETag"].strip('"')
    assert etag.endswith("-2") and etag == s3_etag(big / "blob.bin")
    rc, lines = cli(aws, "upload-dataset", "--source", str(tmp_path / "big"), "--s3-uri", f"s3://{BUCKET}/big")
    assert "uploaded: 0 unchanged: 1" in lines[-3]


# ------------------------------------------------------------------------------------------------
# ECR
# ------------------------------------------------------------------------------------------------


def fake_docker(tmp_path: Path) -> tuple[Path, Path]:
    """A docker stand-in that records its arguments and stdin; only the two binsight images exist."""
    record = tmp_path / "docker.log"
    script = tmp_path / "docker"
    script.write_text(f"""#!/usr/bin/env bash
echo "ARGS $*" >> {record}
if [ "$1" = login ]; then echo "STDIN $(cat)" >> {record}; echo "Login Succeeded"; exit 0; fi
if [ "$1" = image ]; then case "$5" in binsight-serve:latest|binsight-train:latest) echo sha256:abc; exit 0;; esac
  echo "Error: No such image: $5" >&2; exit 1; fi
if [ "$1" = push ]; then echo "latest: digest: sha256:0123 size: 1234"; fi
exit 0
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, record


def test_push_images_creates_repositories_and_logs_in_via_stdin(aws, tmp_path) -> None:
    docker, record = fake_docker(tmp_path)
    rc, lines = cli(aws, "push-images", "--docker", str(docker), "--tag", "v1")
    assert rc == 0, lines
    ecr = client("ecr", aws)
    repos = {r["repositoryName"]: r["repositoryUri"] for r in ecr.describe_repositories()["repositories"]}
    assert set(repos) == {"binsight-serve", "binsight-train"}
    log = record.read_text().splitlines()
    login = next(x for x in log if x.startswith("ARGS login"))
    assert "--password-stdin" in login and "--username AWS" in login
    password = next(x for x in log if x.startswith("STDIN ")).removeprefix("STDIN ")
    assert password and password not in login  # the password never appears among the arguments
    assert f"ARGS tag binsight-serve:latest {repos['binsight-serve']}:v1" in log
    assert f"ARGS push {repos['binsight-train']}:v1" in log
    assert f"image_uri: serving {repos['binsight-serve']}:v1" in lines
    # a missing local image is reported before any AWS call
    rc = main(
        ["push-images", "--docker", str(docker), "--serving-image", "nope:1", "--endpoint-url", "http://127.0.0.1:9"]
    )
    assert rc == 2


# ------------------------------------------------------------------------------------------------
# Training and tuning jobs
# ------------------------------------------------------------------------------------------------


def test_training_job_request_described_back(aws) -> None:
    rc, lines = cli(
        aws,
        "train",
        *JOB_ARGS,
        "--job-name",
        "bs-train-1",
        "--hp",
        "epochs=12",
        "--hp",
        "lr=0.0003",
        "--hp",
        "pretrained=true",
        "--instance-type",
        "ml.g5.2xlarge",
        "--instance-count",
        "2",
        "--volume-size-gb",
        "50",
        "--max-runtime-s",
        "7200",
        "--spot",
        "--checkpoint-uri",
        f"s3://{BUCKET}/ckpt/bs-train-1",
        "--max-wait-s",
        "10800",
        "--poll-s",
        "0.01",
    )
    assert rc == 0, lines
    job = client("sagemaker", aws).describe_training_job(TrainingJobName="bs-train-1")
    assert job["HyperParameters"] == {"epochs": "12", "lr": "0.0003", "pretrained": "true"}
    assert job["AlgorithmSpecification"]["TrainingImage"] == TRAIN_IMAGE
    assert job["RoleArn"] == ROLE_ARN
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {"train": f"s3://{BUCKET}/data/train/", "validation": f"s3://{BUCKET}/data/validation/"}
    assert job["ResourceConfig"] == {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50}
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 10800}
    assert job["EnableManagedSpotTraining"] is True
    assert job["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/ckpt/bs-train-1", "LocalPath": "/opt/ml/checkpoints"}
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/output"
    assert "job_status: status: Completed" in " ".join(lines)
    assert f"model_artifact: s3://{BUCKET}/output/bs-train-1/output/model.tar.gz" in lines
    # moto replaces MetricDefinitions with its own; ours are checked against the service model
    config = TrainingJobConfig(
        image_uri=TRAIN_IMAGE,
        role_arn=ROLE_ARN,
        train_uri=f"s3://{BUCKET}/t",
        output_uri=f"s3://{BUCKET}/o",
        job_name="x",
    )
    request = training_job_request(config)
    assert_valid("sagemaker", "CreateTrainingJob", request)
    assert {d["Name"]: d["Regex"] for d in request["AlgorithmSpecification"]["MetricDefinitions"]} == METRIC_REGEXES
    assert "MaxWaitTimeInSeconds" not in request["StoppingCondition"] and "CheckpointConfig" not in request


def test_training_wait_streams_logs_and_reports_spot_savings(aws) -> None:
    logs = client("logs", aws)
    group, stream = "/aws/sagemaker/TrainingJobs", "bs-train-2/algo-1-1700000000"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    stub = Stubber(sagemaker)
    config = TrainingJobConfig(
        image_uri=TRAIN_IMAGE,
        role_arn=ROLE_ARN,
        train_uri=f"s3://{BUCKET}/t",
        output_uri=f"s3://{BUCKET}/o",
        job_name="bs-train-2",
        spot=True,
        checkpoint_uri=f"s3://{BUCKET}/ckpt",
        poll_s=1,
    )
    stub.add_response(
        "create_training_job",
        {"TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/bs-train-2"},
        training_job_request(config),
    )
    base = {
        "TrainingJobName": "bs-train-2",
        "TrainingJobArn": "arn:x",
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"VolumeSizeInGB": 30},
        "StoppingCondition": {},
        "CreationTime": 0,
        "ModelArtifacts": {"S3ModelArtifacts": "s3://b/o/m.tar.gz"},
    }
    states = [
        ("InProgress", "Starting", "Launching requested ML instances"),
        ("InProgress", "Training", "Training image download completed."),
        ("InProgress", "Training", "Training image download completed."),
        ("Completed", "Completed", "Training job completed"),
    ]
    events = [
        ["train_start: architecture: efficientnet_lite0", "epoch: 1 val_acc: 0.3000"],
        ["epoch: 2 val_acc: 0.3500"],
        [],
        ["test_acc: 0.4000 test_rmse: 1.0100"],
    ]

    def put(messages: list[str]) -> None:
        if messages:
            logs.put_log_events(
                logGroupName=group,
                logStreamName=stream,
                logEvents=[{"timestamp": int(time.time() * 1000) + i, "message": m} for i, m in enumerate(messages)],
            )

    for status, secondary, message in states:
        extra = (
            {
                "BillableTimeInSeconds": 240,
                "TrainingTimeInSeconds": 600,
                "EnableManagedSpotTraining": True,
                "FinalMetricDataList": [{"MetricName": "val_acc", "Value": 0.35, "Timestamp": 0}],
            }
            if status == "Completed"
            else {}
        )
        stub.add_response(
            "describe_training_job",
            {
                **base,
                "TrainingJobStatus": status,
                "SecondaryStatus": secondary,
                "SecondaryStatusTransitions": [{"Status": secondary, "StartTime": 0, "StatusMessage": message}],
                **extra,
            },
            {"TrainingJobName": "bs-train-2"},
        )
    lines: list[str] = []
    sleeps = iter(events[1:])
    put(events[0])
    with stub:
        rc = run_training(
            config,
            lines.append,
            FixedClients({"sagemaker": sagemaker, "logs": logs}),
            sleep=lambda _: put(next(sleeps)),
        )
    stub.assert_no_pending_responses()
    assert rc == 0
    log_lines = [x for x in lines if x.startswith(("train_start", "epoch", "test_acc"))]
    assert log_lines == [
        "train_start: architecture: efficientnet_lite0",
        "epoch: 1 val_acc: 0.3000",
        "epoch: 2 val_acc: 0.3500",
        "test_acc: 0.4000 test_rmse: 1.0100",
    ]  # each line once
    statuses = [x for x in lines if x.startswith("job_status:")]
    assert len(statuses) == 3  # changes only: Starting, Training, Completed
    assert "billable_seconds: 240 training_seconds: 600 spot_savings_percent: 60.0" in lines
    assert "final_metric: val_acc: 0.35" in lines


def test_failed_job_report() -> None:
    lines: list[str] = []
    rc = report(
        {
            "TrainingJobName": "j",
            "TrainingJobStatus": "Failed",
            "FailureReason": "AlgorithmError: bad data",
            "BillableTimeInSeconds": 30,
            "TrainingTimeInSeconds": 30,
        },
        lines.append,
    )
    assert rc == 1 and "failure_reason: AlgorithmError: bad data" in lines
    assert "billable_seconds: 30 training_seconds: 30" in lines  # not spot: no savings figure


def test_tuning_job_request_described_back(aws) -> None:
    rc, lines = cli(
        aws,
        "tune",
        *JOB_ARGS,
        "--tuning-job-name",
        "bs-tune-1",
        "--lr-range",
        "1e-5:1e-2",
        "--batch-sizes",
        "16",
        "32",
        "64",
        "--epochs-range",
        "5:20",
        "--architectures",
        "efficientnet_lite0",
        "resnet18",
        "--max-jobs",
        "12",
        "--max-parallel-jobs",
        "3",
        "--hp",
        "max_count=5",
        "--poll-s",
        "0.01",
    )
    assert rc == 0, lines
    job = client("sagemaker", aws).describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="bs-tune-1")
    tuning = job["HyperParameterTuningJobConfig"]
    assert tuning["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "val_acc"}
    assert tuning["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3}
    ranges = tuning["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "lr", "MinValue": "1e-05", "MaxValue": "0.01", "ScalingType": "Logarithmic"}
    ]
    assert ranges["IntegerParameterRanges"] == [
        {"Name": "epochs", "MinValue": "5", "MaxValue": "20", "ScalingType": "Linear"}
    ]
    assert {r["Name"]: r["Values"] for r in ranges["CategoricalParameterRanges"]} == {
        "batch_size": ["16", "32", "64"],
        "architecture": ["efficientnet_lite0", "resnet18"],
    }
    definition = job["TrainingJobDefinition"]
    assert definition["StaticHyperParameters"] == {"max_count": "5"}
    assert definition["AlgorithmSpecification"]["TrainingImage"] == TRAIN_IMAGE
    assert "val_acc" in {d["Name"] for d in definition["AlgorithmSpecification"]["MetricDefinitions"]}
    assert any(x.startswith("best_training_job: ") for x in lines)
    assert any(x.startswith("best_hyperparameter: ") for x in lines)
    config = TuningJobConfig(
        image_uri=TRAIN_IMAGE,
        role_arn=ROLE_ARN,
        train_uri=f"s3://{BUCKET}/t",
        output_uri=f"s3://{BUCKET}/o",
        batch_size_range="8:64",
        spot=True,
        checkpoint_uri=f"s3://{BUCKET}/c",
        early_stopping="Auto",
    )
    request = tuning_job_request(config)
    assert_valid("sagemaker", "CreateHyperParameterTuningJob", request)
    assert (
        request["HyperParameterTuningJobConfig"]["ParameterRanges"]["IntegerParameterRanges"][0]["Name"] == "batch_size"
    )


# ------------------------------------------------------------------------------------------------
# Model package, endpoint, invoke, batch transform
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.architectures import build_model
    from service.artifact import metadata_for, save_artifact

    root = tmp_path_factory.mktemp("model")
    labels = ["0", "1", "2", "3"]
    save_artifact(
        root,
        build_model("efficientnet_lite0", len(labels), pretrained=False),
        metadata_for("efficientnet_lite0", labels, input_size=32),
    )
    (root / "split_manifest.json").write_text("{}")
    (root / ".hidden.json").write_text("{}")
    return root


def test_package_model_layout_and_validation(aws, model_dir, tmp_path) -> None:
    out = tmp_path / "pkg" / "model.tar.gz"
    rc, lines = cli(
        aws,
        "package-model",
        "--model-dir",
        str(model_dir),
        "--output",
        str(out),
        "--upload-uri",
        f"s3://{BUCKET}/models/v1/",
    )
    assert rc == 0, lines
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["model.json", "model.pth", "split_manifest.json"]  # at the root, no folder
        assert all(m.uid == 0 and m.mode == 0o644 for m in tar.getmembers())
    assert check_archive(out)
    assert f"model_data: s3://{BUCKET}/models/v1/model.tar.gz bytes: {out.stat().st_size}" in lines
    head = client("s3", aws).head_object(Bucket=BUCKET, Key="models/v1/model.tar.gz")
    assert head["ContentLength"] == out.stat().st_size
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((model_dir / "model.json").read_text())
    (broken / "model.pth").write_bytes(b"not a state dict")
    rc = main(["package-model", "--model-dir", str(broken), "--output", str(tmp_path / "b.tar.gz")])
    assert rc == 2 and not (tmp_path / "b.tar.gz").exists()


def test_deploy_invoke_delete(aws, model_dir, tmp_path) -> None:
    args = ["--image-uri", SERVE_IMAGE, "--role-arn", ROLE_ARN, "--endpoint-name", "bs-ep", "--poll-s", "0.01"]
    rc, lines = cli(
        aws,
        "deploy",
        *args,
        "--model-dir",
        str(model_dir),
        "--upload-uri",
        f"s3://{BUCKET}/models",
        "--instance-type",
        "ml.c5.xlarge",
        "--env",
        "MAX_BATCH_SIZE=8",
        "--model-name",
        "bs-model-1",
    )
    assert rc == 0, lines
    sm = client("sagemaker", aws)
    model = sm.describe_model(ModelName="bs-model-1")
    assert model["PrimaryContainer"]["Image"] == SERVE_IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://{BUCKET}/models/bs-model-1/model.tar.gz"
    assert model["PrimaryContainer"]["Environment"] == {"MAX_BATCH_SIZE": "8"}
    assert model["ExecutionRoleArn"] == ROLE_ARN
    ep = sm.describe_endpoint(EndpointName="bs-ep")
    assert ep["EndpointStatus"] == "InService"
    variant = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])["ProductionVariants"][0]
    assert (variant["ModelName"], variant["InstanceType"], variant["InitialInstanceCount"]) == (
        "bs-model-1",
        "ml.c5.xlarge",
        1,
    )
    assert any(x.startswith("endpoint_ready: bs-ep") for x in lines)
    # --mode create on an existing endpoint stops before creating anything
    before = len(sm.list_models()["Models"])
    rc = main(
        [
            "deploy",
            *args,
            "--mode",
            "create",
            "--model-data",
            model["PrimaryContainer"]["ModelDataUrl"],
            "--endpoint-url",
            aws,
        ]
    )
    assert rc == 2 and len(sm.list_models()["Models"]) == before

    # invoke: moto's server cannot take a binary body, so the Stubber checks our request against the
    # service model (endpoint, image bytes, content types) and answers as the serving app does
    prediction = {
        "predictions": [
            {"count": 3, "label": "3", "confidence": 0.7021, "expected_count": 3.19, "probabilities": {"3": 0.7021}}
        ]
    }
    photo = tmp_path / "bin.jpg"
    photo.write_bytes(jpeg_bytes(3))
    runtime = boto3.client("sagemaker-runtime", region_name=REGION)
    answer = json.dumps(prediction).encode()
    with Stubber(runtime) as stub:
        stub.add_response(
            "invoke_endpoint",
            {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
            {
                "EndpointName": "bs-ep",
                "Body": photo.read_bytes(),
                "ContentType": "image/jpeg",
                "Accept": "application/json",
            },
        )
        lines = []
        config = InvokeConfig(endpoint_name="bs-ep", images=[photo])
        assert endpoint_ops.run_invoke(config, lines.append, FixedClients({"sagemaker-runtime": runtime})) == 0
        stub.assert_no_pending_responses()
    assert lines[0].startswith(f"image: {photo} count: 3 label: 3 confidence: 0.7021 expected_count: 3.19")

    rc, lines = cli(aws, "delete-endpoint", "--endpoint-name", "bs-ep")
    assert rc == 0, lines
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert "bs-model-1" not in [m["ModelName"] for m in sm.list_models()["Models"]]
    rc = main(["delete-endpoint", "--endpoint-name", "bs-ep", "--endpoint-url", aws])
    assert rc == 2  # no such endpoint: a clear message, no traceback


def test_invoke_output_parsing() -> None:
    assert endpoint_ops.parse_prediction(b'{"count": 2, "label": "2"}') == {"count": 2, "label": "2"}
    assert endpoint_ops.parse_prediction(b'{"count": 1}\n{"count": 5}\n')["count"] == 1
    assert (
        endpoint_ops.format_prediction(endpoint_ops.parse_prediction(b'{"predictions": [{"error": "bad"}]}'))
        == "error: bad"
    )
    assert "unexpected answer" in endpoint_ops.parse_prediction(b"<html>")["error"]
    assert endpoint_ops.content_type_for(Path("a.PNG"), None) == "image/png"


def deploy_config(**kw: Any) -> DeployConfig:
    return DeployConfig(
        image_uri=SERVE_IMAGE,
        role_arn=ROLE_ARN,
        endpoint_name="bs-ep",
        model_data=f"s3://{BUCKET}/m/model.tar.gz",
        poll_s=1,
        **kw,
    )


def stub_update(stub: Stubber, final_config: str, failure: str | None = None) -> None:
    """The calls of an update, in order, each checked against our request; UpdateEndpoint is not in moto."""
    arn = "arn:aws:sagemaker:us-east-1:123456789012:endpoint/bs-ep"
    described = {
        "EndpointName": "bs-ep",
        "EndpointArn": arn,
        "EndpointConfigName": "bs-ep-old",
        "EndpointStatus": "InService",
        "CreationTime": 0,
        "LastModifiedTime": 0,
    }
    stub.add_response("describe_endpoint", described, {"EndpointName": "bs-ep"})
    stub.add_response(
        "create_model",
        {"ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/bs-model-2"},
        {
            "ModelName": "bs-model-2",
            "ExecutionRoleArn": ROLE_ARN,
            "Tags": ANY,
            "PrimaryContainer": {
                "Image": SERVE_IMAGE,
                "ModelDataUrl": f"s3://{BUCKET}/m/model.tar.gz",
                "Mode": "SingleModel",
            },
        },
    )
    config_arn = "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/bs-model-2"
    stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": config_arn},
        {
            "EndpointConfigName": "bs-model-2",
            "Tags": ANY,
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "bs-model-2",
                    "InitialInstanceCount": 2,
                    "InstanceType": "ml.m5.xlarge",
                    "InitialVariantWeight": 1.0,
                }
            ],
        },
    )
    stub.add_response(
        "update_endpoint", {"EndpointArn": arn}, {"EndpointName": "bs-ep", "EndpointConfigName": "bs-model-2"}
    )
    stub.add_response("describe_endpoint", {**described, "EndpointStatus": "Updating"}, {"EndpointName": "bs-ep"})
    done = {**described, "EndpointConfigName": final_config}
    if failure:
        done["FailureReason"] = failure
    stub.add_response("describe_endpoint", done, {"EndpointName": "bs-ep"})


@pytest.mark.parametrize("rolled_back", [False, True])
def test_deploy_update_with_stubber(aws, rolled_back) -> None:
    s3 = client("s3", aws)
    s3.put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"x")
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    stub = Stubber(sagemaker)
    # on success the endpoint ends on the new config; a failed update rolls back to the old one
    stub_update(stub, "bs-ep-old" if rolled_back else "bs-model-2", "health check failed" if rolled_back else None)
    lines: list[str] = []
    config = deploy_config(model_name="bs-model-2", instance_type="ml.m5.xlarge", instance_count=2)
    with stub:
        rc = endpoint_ops.run_deploy(
            config,
            lines.append,
            FixedClients(
                {"sagemaker": sagemaker, "s3": s3, "application-autoscaling": client("application-autoscaling", aws)}
            ),
            sleep=lambda _: None,
        )
    stub.assert_no_pending_responses()
    assert "endpoint: bs-ep action: update previous_config: bs-ep-old" in lines
    if rolled_back:
        assert rc == 1 and any("reason: health check failed" in x for x in lines)
    else:
        assert rc == 0 and "endpoint_ready: bs-ep model: bs-model-2 config: bs-model-2" in lines


def test_deploy_from_training_job(aws) -> None:
    rc, _ = cli(aws, "train", *JOB_ARGS, "--job-name", "bs-train-3", "--no-wait")
    assert rc == 0
    rc, lines = cli(
        aws,
        "deploy",
        "--image-uri",
        SERVE_IMAGE,
        "--role-arn",
        ROLE_ARN,
        "--endpoint-name",
        "bs-ep3",
        "--training-job",
        "bs-train-3",
        "--model-name",
        "bs-model-3",
        "--poll-s",
        "0.01",
    )
    assert rc == 0, lines
    model = client("sagemaker", aws).describe_model(ModelName="bs-model-3")
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://{BUCKET}/output/bs-train-3/output/model.tar.gz"


def test_deploy_missing_model_data_is_clear(aws) -> None:
    rc = main(
        [
            "deploy",
            "--image-uri",
            SERVE_IMAGE,
            "--role-arn",
            ROLE_ARN,
            "--model-data",
            f"s3://{BUCKET}/nope/model.tar.gz",
            "--endpoint-url",
            aws,
        ]
    )
    assert rc == 2
    assert client("sagemaker", aws).list_models()["Models"] == []


def test_batch_transform_request_described_back(aws) -> None:
    s3 = client("s3", aws)
    for i in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"photos/{i}.jpg", Body=jpeg_bytes(i))
    rc, lines = cli(
        aws,
        "batch-transform",
        "--model-name",
        "bs-model-1",
        "--input-uri",
        f"s3://{BUCKET}/photos/",
        "--output-uri",
        f"s3://{BUCKET}/counts/",
        "--job-name",
        "bs-transform-1",
        "--instance-count",
        "2",
        "--max-concurrent-transforms",
        "4",
        "--poll-s",
        "0.01",
    )
    assert rc == 0, lines
    assert any(x.startswith("transform_job: bs-transform-1") and "photos: 3" in x for x in lines)
    job = client("sagemaker", aws).describe_transform_job(TransformJobName="bs-transform-1")
    assert job["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/photos/"}},
        "ContentType": "application/x-image",
        "SplitType": "None",
        "CompressionType": "None",
    }
    assert job["TransformOutput"] == {
        "S3OutputPath": f"s3://{BUCKET}/counts/",
        "Accept": "application/jsonlines",
        "AssembleWith": "Line",
    }
    assert job["BatchStrategy"] == "SingleRecord" and job["MaxConcurrentTransforms"] == 4
    assert job["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 2}
    assert_valid(
        "sagemaker",
        "CreateTransformJob",
        transform_request(
            BatchTransformConfig(model_name="m", input_uri=f"s3://{BUCKET}/p", output_uri=f"s3://{BUCKET}/o")
        ),
    )
    rc = main(
        [
            "batch-transform",
            "--model-name",
            "m",
            "--input-uri",
            f"s3://{BUCKET}/empty/",
            "--output-uri",
            f"s3://{BUCKET}/o/",
            "--endpoint-url",
            aws,
        ]
    )
    assert rc == 2  # nothing to transform: said before a job is made
