"""binsight-aws input checks (before any AWS call), CLI/env plumbing and the SageMaker metric regexes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from binsight_aws.cli import build_parser, main
from binsight_aws.configs import TrainingJobConfig, TuningJobConfig
from binsight_aws.training_job import METRIC_REGEXES, metric_definitions
from binsight_aws.validate import check_instance_type, check_role_arn, error_code, parse_s3_uri

from aws_support import ROLE_ARN, TRAIN_IMAGE, fake_aws_env  # noqa: F401

JOB = [
    "--image-uri",
    TRAIN_IMAGE,
    "--role-arn",
    ROLE_ARN,
    "--train-uri",
    "s3://my-bucket/data/train",
    "--output-uri",
    "s3://my-bucket/output",
]


class Boom(Exception):
    pass


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to make a boto3 client fails the test: bad input must stop before that."""
    import boto3

    def refuse(*args, **kwargs):
        raise Boom("an AWS client was created")

    monkeypatch.setattr(boto3.Session, "client", refuse)
    monkeypatch.setattr(boto3, "client", refuse)


def errors(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Individual checks
# ------------------------------------------------------------------------------------------------


def test_role_arn() -> None:
    assert check_role_arn(ROLE_ARN) == ROLE_ARN
    assert check_role_arn("arn:aws-cn:iam::123456789012:role/service-role/Sage.Maker+Role") is not None
    for bad in (
        "",
        "SageMakerRole",
        "arn:aws:iam::12345:role/x",
        "arn:aws:iam::123456789012:user/bob",
        "arn:aws:s3:::bucket",
    ):
        with pytest.raises(ValueError, match="IAM role ARN"):
            check_role_arn(bad)


def test_s3_uri() -> None:
    uri = parse_s3_uri("s3://my-bucket/data/train")
    assert (uri.bucket, uri.key) == ("my-bucket", "data/train")
    assert uri.join("x", "/y/").uri == "s3://my-bucket/data/train/x/y"
    assert uri.as_prefix().key == "data/train/"
    for bad, reason in (
        ("my-bucket/data", "not an S3 URI"),
        ("s3://My_Bucket/x", "not a valid bucket"),
        ("s3://ab/x", "not a valid bucket"),
        ("s3://192.168.1.1/x", "not a valid bucket"),
        ("s3://bucket/a//b", "empty path segment"),
        ("https://bucket/x", "not an S3 URI"),
    ):
        with pytest.raises(ValueError, match=reason):
            parse_s3_uri(bad)
    with pytest.raises(ValueError, match="no key/prefix"):
        parse_s3_uri("s3://my-bucket/", need_key=True)


def test_instance_types() -> None:
    for good in ("ml.g4dn.xlarge", "ml.m5.large", "ml.p4d.24xlarge", "ml.c5.18xlarge", "ml.t2.medium"):
        assert check_instance_type(good) == good
    with pytest.raises(ValueError, match="expected ml.<family>.<size>"):
        check_instance_type("g4dn.xlarge")
    with pytest.raises(ValueError, match=r"did you mean ml\.g4dn\.xlarge"):
        check_instance_type("ml.g4dnn.xlarge")
    with pytest.raises(ValueError, match="unknown instance size"):
        check_instance_type("ml.m5.5xlarge")
    assert check_instance_type("ml.zz9.xlarge", allow_unknown=True) == "ml.zz9.xlarge"


def test_error_code_reads_client_errors_and_nothing_else() -> None:
    from botocore.exceptions import ClientError

    assert error_code(ClientError({"Error": {"Code": "NoSuchKey", "Message": "m"}}, "GetObject")) == "NoSuchKey"
    assert error_code(ClientError({"ResponseMetadata": {"HTTPStatusCode": 500}}, "GetObject")) == ""
    assert error_code(ValueError("not from AWS")) == ""


# ------------------------------------------------------------------------------------------------
# Config models
# ------------------------------------------------------------------------------------------------


def test_training_job_config_spot_rules() -> None:
    base = dict(image_uri=TRAIN_IMAGE, role_arn=ROLE_ARN, train_uri="s3://b-1/train", output_uri="s3://b-1/out")
    with pytest.raises(ValidationError, match="--spot needs --checkpoint-uri"):
        TrainingJobConfig(**base, spot=True)
    with pytest.raises(ValidationError, match=r"--max-wait-s \(3600\) must be at least --max-runtime-s \(7200\)"):
        TrainingJobConfig(**base, spot=True, checkpoint_uri="s3://b-1/ckpt", max_runtime_s=7200, max_wait_s=3600)
    with pytest.raises(ValidationError, match="applies to spot training only"):
        TrainingJobConfig(**base, max_wait_s=9000)
    config = TrainingJobConfig(**base, spot=True, checkpoint_uri="s3://b-1/ckpt", max_runtime_s=3600)
    assert config.max_wait_s == 7200  # default: twice the runtime
    with pytest.raises(ValidationError, match="must be different S3 prefixes"):
        TrainingJobConfig(**base, validation_uri="s3://b-1/train")


def test_hyperparameters_are_strings_and_file_merges(tmp_path: Path) -> None:
    hp_file = tmp_path / "hp.json"
    hp_file.write_text('{"epochs": 10, "pretrained": true, "lr": 0.001}')
    config = TrainingJobConfig(
        image_uri=TRAIN_IMAGE,
        role_arn=ROLE_ARN,
        train_uri="s3://b-1/train",
        output_uri="s3://b-1/out",
        hyperparameters=["lr=0.0003", "batch_size=64"],
        hyperparameters_file=hp_file,
    )
    assert config.hyperparameters == {"epochs": "10", "pretrained": "true", "lr": "0.0003", "batch_size": "64"}


def test_tuning_config_rules() -> None:
    base = dict(image_uri=TRAIN_IMAGE, role_arn=ROLE_ARN, train_uri="s3://b-1/train", output_uri="s3://b-1/out")
    with pytest.raises(ValidationError, match="at most 32 characters|not a valid SageMaker tuning job name"):
        TuningJobConfig(**base, tuning_job_name="x" * 33)
    with pytest.raises(ValidationError, match="lr are tuned"):
        TuningJobConfig(**base, hyperparameters={"lr": "0.1"})
    with pytest.raises(ValidationError, match="MIN must be below MAX"):
        TuningJobConfig(**base, epochs_range="20:5")
    with pytest.raises(ValidationError, match="not both"):
        TuningJobConfig(**base, batch_sizes=[16], batch_size_range="8:64")
    with pytest.raises(ValidationError, match="MIN > 0"):
        TuningJobConfig(**base, lr_range="0:0.1")
    with pytest.raises(ValidationError, match="nothing to tune"):
        TuningJobConfig(**base, lr_range="")
    with pytest.raises(ValidationError, match="Grid strategy searches categorical values only"):
        TuningJobConfig(**base, strategy="Grid", batch_sizes=[16, 32])
    # tune allows spot without a checkpoint (a trial restarts from scratch); train does not
    assert TuningJobConfig(**base, spot=True).max_wait_s == 2 * 4 * 3600


# ------------------------------------------------------------------------------------------------
# The command line: clear messages, exit 2, no AWS call
# ------------------------------------------------------------------------------------------------


def test_cli_bad_inputs_fail_before_aws(capsys, no_aws, tmp_path) -> None:
    err = errors(
        capsys,
        ["train", *JOB[:2], "--train-uri", "my-bucket/train", "--output-uri", "s3://b-1/o", "--role-arn", "MyRole"],
    )
    assert "error: train: --role-arn: 'MyRole' is not an IAM role ARN" in err
    assert "error: train: --train-uri: 'my-bucket/train' is not an S3 URI" in err
    err = errors(
        capsys, ["train", "--image-uri", TRAIN_IMAGE, "--train-uri", "s3://b-1/t", "--output-uri", "s3://b-1/o"]
    )
    assert "--role-arn: required (or set BINSIGHT_AWS_ROLE_ARN)" in err
    assert "ml.p9" in errors(capsys, ["train", *JOB, "--instance-type", "ml.p9.xlarge"])
    assert "--spot needs --checkpoint-uri" in errors(capsys, ["train", *JOB, "--spot"])
    assert "unknown hyperparameter 'learning_rate'" in errors(capsys, ["train", *JOB, "--hp", "learning_rate=0.1"])
    assert "epochs" in errors(capsys, ["train", *JOB, "--hp", "epochs=many"])
    assert "unknown architecture(s) resnet9000" in errors(
        capsys, ["tune", *JOB, "--architectures", "resnet9000", "efficientnet_lite0"]
    )
    assert "is not an ECR image URI" in errors(
        capsys,
        [
            "deploy",
            "--image-uri",
            "binsight-serve:latest",
            "--role-arn",
            ROLE_ARN,
            "--model-data",
            "s3://b-1/m/model.tar.gz",
        ],
    )
    assert "must name a .tar.gz object" in errors(
        capsys, ["deploy", "--image-uri", TRAIN_IMAGE, "--role-arn", ROLE_ARN, "--model-data", "s3://b-1/m/model"]
    )
    assert "exactly one of --model-data, --model-dir, --training-job" in errors(
        capsys, ["deploy", "--image-uri", TRAIN_IMAGE, "--role-arn", ROLE_ARN]
    )
    assert "does not exist or is not a file" in errors(capsys, ["invoke", "--images", str(tmp_path / "no.jpg")])
    assert "--output-uri must differ from --input-uri" in errors(
        capsys, ["batch-transform", "--model-name", "m", "--input-uri", "s3://b-1/p", "--output-uri", "s3://b-1/p/"]
    )
    assert "--model-dir" in errors(capsys, ["package-model", "--model-dir", str(tmp_path)])
    assert "invalid choice" in errors(capsys, ["launch-rockets"])


def test_environment_supplies_options_and_cli_wins(capsys, no_aws, monkeypatch) -> None:
    monkeypatch.setenv("BINSIGHT_AWS_ROLE_ARN", "not-an-arn")
    monkeypatch.setenv("BINSIGHT_AWS_SPOT", "true")
    err = errors(
        capsys, ["train", "--image-uri", TRAIN_IMAGE, "--train-uri", "s3://b-1/t", "--output-uri", "s3://b-1/o"]
    )
    assert "--role-arn: 'not-an-arn' is not an IAM role ARN" in err
    monkeypatch.setenv("BINSIGHT_AWS_ROLE_ARN", ROLE_ARN)
    err = errors(
        capsys, ["train", "--image-uri", TRAIN_IMAGE, "--train-uri", "s3://b-1/t", "--output-uri", "s3://b-1/o"]
    )
    assert "--spot needs --checkpoint-uri" in err
    monkeypatch.setenv("BINSIGHT_AWS_ROLE_ARN", "not-an-arn")
    err = errors(capsys, [*["train"], *JOB, "--no-spot", "--instance-type", "bad"])  # CLI beats env
    assert "role-arn" not in err and "spot" not in err and "'bad' is not a SageMaker instance type" in err


def test_help_lists_every_command_and_env_names(capsys) -> None:
    parser = build_parser()
    text = parser.format_help()
    for command in (
        "download-abid",
        "upload-dataset",
        "push-images",
        "train",
        "tune",
        "package-model",
        "deploy",
        "delete-endpoint",
        "invoke",
        "batch-transform",
    ):
        assert command in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "BINSIGHT_AWS_CHECKPOINT_URI" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Metric regexes against the training loop's log lines
# ------------------------------------------------------------------------------------------------

EPOCH_LINE = (
    "epoch: 3 train_loss: 0.8100 train_acc: 0.4100 val_loss: 0.9500 val_acc: 0.3800 val_rmse: 1.0200 "
    "val_mae: 0.7100 lr: 3.000e-04 epoch_time_s: 61.2"
)
BRIEF_LINE = (
    "epoch: 3 train_loss: 0.81 train_acc: 0.41 val_loss: 0.95 val_acc: 0.38 val_rmse: 1.02 lr: 0.0003 "
    "epoch_time_s: 61.2"
)
TEST_LINE = (
    "test_acc: 0.4000 test_rmse: 1.0100 test_mae: 0.7200 test_off_by_one_acc: 0.8100 "
    "test_macro_f1: 0.3500 test_n: 1104 test_loss: 1.2000 test_skipped: 0"
)
DISTRACTORS = [
    "train_start: architecture: efficientnet_lite0 device: cuda world_size: 1",
    "best_val_acc: 0.99 best_epoch: 7",
    "select_metric: val_acc",
    "backbone_lr_mult: 0.1 min_lr_ratio: 0.01",
    "resumed_from: /opt/ml/checkpoints/checkpoint.pt epoch: 2",
]


def first_match(name: str, text: str) -> float | None:
    match = re.search(METRIC_REGEXES[name], text)
    return None if match is None else float(match.group(1))


@pytest.mark.parametrize(
    "name, line, expected",
    [
        ("train_loss", EPOCH_LINE, 0.81),
        ("train_acc", EPOCH_LINE, 0.41),
        ("val_loss", EPOCH_LINE, 0.95),
        ("val_acc", EPOCH_LINE, 0.38),
        ("val_rmse", EPOCH_LINE, 1.02),
        ("val_mae", EPOCH_LINE, 0.71),
        ("lr", EPOCH_LINE, 3e-4),
        ("epoch_time_s", EPOCH_LINE, 61.2),
        ("val_acc", BRIEF_LINE, 0.38),
        ("lr", BRIEF_LINE, 0.0003),
        ("epoch_time_s", BRIEF_LINE, 61.2),
        ("test_acc", TEST_LINE, 0.40),
        ("test_rmse", TEST_LINE, 1.01),
        ("test_mae", TEST_LINE, 0.72),
        ("test_off_by_one_acc", TEST_LINE, 0.81),
        ("test_macro_f1", TEST_LINE, 0.35),
        ("test_loss", TEST_LINE, 1.2),
    ],
)
def test_metric_regex_reads_log_line(name: str, line: str, expected: float) -> None:
    assert first_match(name, line) == pytest.approx(expected)


def test_metric_regexes_ignore_other_lines_and_fit_sagemaker_limits() -> None:
    for name in METRIC_REGEXES:
        for line in DISTRACTORS:
            assert first_match(name, line) is None, (name, line)
        assert first_match(name, TEST_LINE if not name.startswith("test_") else EPOCH_LINE) is None
    definitions = metric_definitions()
    assert len(definitions) <= 40 and all(len(d["Regex"]) <= 500 for d in definitions)
    assert {"val_acc", "test_acc", "test_off_by_one_acc"} <= {d["Name"] for d in definitions}


def test_metric_regexes_read_the_training_loop_format() -> None:
    from training.log import format_value  # the formatter the loop uses for every metric value

    for value in (0.4123456, 3e-4, 1.5e-6, 0.0, 12.0, -0.25):
        line = f"epoch: 2 val_acc: {format_value(value)} lr: {format_value(value)}"
        assert first_match("val_acc", line) == pytest.approx(float(format_value(value)))
        assert first_match("lr", line) == pytest.approx(float(format_value(value)))


# ------------------------------------------------------------------------------------------------
# Progress display and import weight
# ------------------------------------------------------------------------------------------------


def test_progress_lines_without_terminal_and_bar_with_one() -> None:
    import io

    from binsight_aws.status import StatusWatcher
    from training.log import Progress

    lines: list[str] = []
    with Progress("download", total=4, unit="bin", log=lines.append, interval_s=0, tty=False) as progress:
        for _ in range(4):
            progress.update(1, failed=0)
    assert lines[0].startswith("download_progress: done: 1 total: 4 percent: 25.0 rate_per_s: ")
    assert lines[-1].startswith("download_progress: done: 4 total: 4 percent: 100.0") and "failed: 0" in lines[-1]
    assert len(lines) == 5  # one per update (interval 0) and one at the end, not two
    quiet: list[str] = []
    with Progress("upload", total=100, log=quiet.append, interval_s=3600, tty=False) as progress:
        progress.update(50)
    assert len(quiet) == 1  # within the interval only the closing line
    stream = io.StringIO()
    bar_lines: list[str] = []
    with Progress("download", total=4, unit="bin", log=bar_lines.append, stream=stream, tty=True) as progress:
        progress.update(4)
    assert "4/4" in stream.getvalue() and bar_lines == []  # a terminal gets a tqdm bar instead of lines
    watched: list[str] = []
    watcher = StatusWatcher("job_status", watched.append, heartbeat_s=3600)
    assert watcher.observe(status="InProgress") and not watcher.observe(status="InProgress")
    assert watcher.observe(status="Completed") and len(watched) == 2


def test_cli_help_imports_neither_torch_nor_boto3() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import binsight_aws.cli as c; c.build_parser(); "
        "print('torch' in sys.modules, 'boto3' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    assert out.split() == ["False", "False"]
