"""What SageMaker itself writes into a training container, and what ``train`` makes of it: the
hyperparameters a tuning job and the SDK add, ``inputdataconfig.json`` (input modes, content types,
distribution), ``TRAINING_JOB_NAME``, and the failure reason's size limit.

The tuning job's hyperparameters are derived from the request ``binsight-aws tune`` sends, the way the
tuning service fills them in (static ones, one value per range, ``_tuning_objective_metric``)."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from binsight_aws.configs import TuningJobConfig
from binsight_aws.training_job import METRIC_REGEXES
from binsight_aws.tuning import tuning_job_request
from training.config import ConfigError, build_config, load_config
from training.input_config import ChannelConfig, InputModeError, check_channels, read_input_data_config
from training.metric_names import CHARTED
from training.sagemaker_env import FAILURE_REASON_LIMIT, resolve_paths
from training.sagemaker_hyperparameters import (
    SDK_KEYS,
    TUNING_OBJECTIVE_KEY,
    PlatformHyperparameters,
    is_platform_key,
    log_lines,
    objective_warning,
    printed_metrics,
)
from training.sagemaker_job import job_lines

from training_support import TINY, make_opt_ml, subprocess_env, tiny_config, train_command

#: What the SDK (2.257) adds for a framework estimator (script mode) under a HyperparameterTuner: the values
#: are JSON-encoded strings, as the SDK writes them.
SDK_FRAMEWORK_KEYS = {
    "sagemaker_program": '"train.py"',
    "sagemaker_submit_directory": '"s3://bucket/job/source/sourcedir.tar.gz"',
    "sagemaker_container_log_level": "20",
    "sagemaker_job_name": '"binsight-tune-2024-01-01-00-00-00-000"',
    "sagemaker_region": '"eu-west-1"',
    "sagemaker_estimator_class_name": '"PyTorch"',
    "sagemaker_estimator_module": '"sagemaker.pytorch.estimator"',
}


def tuning_service_hyperparameters(request: dict[str, Any]) -> dict[str, str]:
    """The hyperparameters.json of one training job the tuning service launches for ``request``:
    the static ones, a value inside each range (as a string, the way the service writes numbers) and
    the objective's metric name under ``_tuning_objective_metric``."""
    definition = request["TrainingJobDefinition"]
    tuning = request["HyperParameterTuningJobConfig"]
    values = dict(definition["StaticHyperParameters"])
    ranges = tuning["ParameterRanges"]
    for item in ranges.get("ContinuousParameterRanges", []):
        low, high = float(item["MinValue"]), float(item["MaxValue"])
        values[item["Name"]] = repr(math.sqrt(low * high))  # e.g. '0.0031622776601683794'
    for item in ranges.get("IntegerParameterRanges", []):
        values[item["Name"]] = item["MaxValue"]
    for item in ranges.get("CategoricalParameterRanges", []):
        values[item["Name"]] = item["Values"][-1]
    values[TUNING_OBJECTIVE_KEY] = tuning["HyperParameterTuningJobObjective"]["MetricName"]
    return values


def _tiny_tuning_request(**ranges: Any) -> dict[str, Any]:
    static = {k: v for k, v in TINY.items() if k not in ("lr", "batch_size", "epochs")}
    config = TuningJobConfig(
        image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/binsight-train:latest",
        role_arn="arn:aws:iam::123456789012:role/sm",
        train_uri="s3://bucket/data/train",
        validation_uri="s3://bucket/data/validation",
        output_uri="s3://bucket/output",
        hyperparameters=static,
        **ranges,
    )
    return tuning_job_request(config)


# ------------------------------------------------------------------------------- hyperparameters


def test_a_tuning_job_of_binsight_aws_tune_gives_a_valid_config() -> None:
    request = _tiny_tuning_request(lr_range="1e-3:1e-2", batch_sizes=[4, 8], epochs_range="1:2")
    written = tuning_service_hyperparameters(request)
    assert written[TUNING_OBJECTIVE_KEY] == "val_acc"
    config = build_config([("hyperparameters.json", written)])
    assert config.lr == pytest.approx(math.sqrt(1e-3 * 1e-2)) and config.batch_size == 8 and config.epochs == 2
    # the objective is one of the job's metric definitions, and a metric a run with validation data prints
    definitions = {d["Name"] for d in request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]}
    assert written[TUNING_OBJECTIVE_KEY] in definitions
    assert objective_warning("val_acc", printed_metrics(has_validation=True, has_test=True, step_lines=True)) is None


def test_every_key_the_sdk_adds_is_ignored_and_a_misspelt_key_still_fails() -> None:
    values = {**TINY, **SDK_FRAMEWORK_KEYS, **{key: "x" for key in SDK_KEYS}, TUNING_OBJECTIVE_KEY: '"val_acc"'}
    assert build_config([("hyperparameters.json", values)]) == tiny_config()
    assert all(is_platform_key(key) for key in (*SDK_KEYS, TUNING_OBJECTIVE_KEY))
    for key, hint in (
        ("epocs", "did you mean 'epochs'"),
        ("_lr", "did you mean 'lr'"),
        ("_tuning_objective", ""),
        ("tuning_objective_metric", ""),
    ):
        with pytest.raises(ConfigError, match=rf"unknown hyperparameter '{key}' .*{re.escape(hint)}"):
            build_config([("hyperparameters.json", {**values, key: "2"})])


def test_platform_keys_are_logged_and_the_objective_is_checked() -> None:
    platform = PlatformHyperparameters.from_values({**TINY, **SDK_FRAMEWORK_KEYS, TUNING_OBJECTIVE_KEY: '"val_acc"'})
    assert platform.tuning_objective == "val_acc" and "sagemaker_program" in platform.ignored
    printed = printed_metrics(has_validation=True, has_test=False, step_lines=True)
    lines = log_lines(platform, printed)
    assert lines[0].startswith("hyperparameters_ignored: _tuning_objective_metric, sagemaker_container_log_level,")
    assert lines[1:] == ["tuning_objective: val_acc printed: yes"]

    assert set(printed_metrics(has_validation=True, has_test=True, step_lines=True)) == set(CHARTED)
    no_validation = printed_metrics(has_validation=False, has_test=True, step_lines=True)
    assert "no validation data" in objective_warning("val_acc", no_validation)
    assert "no test data" in objective_warning("test_acc", printed)
    unknown = objective_warning("validation:accuracy", printed)
    assert "not a metric binsight prints" in unknown and "val_acc" in unknown
    warned = log_lines(PlatformHyperparameters.from_values({TUNING_OBJECTIVE_KEY: "accuracy"}), printed)
    assert warned[1] == "tuning_objective: accuracy printed: no" and warned[2].startswith("warning: ")
    assert log_lines(PlatformHyperparameters.from_values(TINY), printed) == []


def test_job_lines_read_the_opt_ml_tree(tmp_path: Path) -> None:
    root = make_opt_ml(
        tmp_path / "opt_ml",
        {**TINY, TUNING_OBJECTIVE_KEY: "val_acc", "val_fraction": "0", "sagemaker_region": '"eu-west-1"'},
        n_bins=4,
    )
    paths = resolve_paths(environ={"BINSIGHT_OPT_ML": str(root)})
    config = load_config(environ={}, hyperparameters_file=paths.hyperparameters)
    lines = job_lines(config, paths, environ={"TRAINING_JOB_NAME": "bs-tune-001-abc"})
    assert lines[:2] == [
        "training_job_name: bs-tune-001-abc",
        "hyperparameters_ignored: _tuning_objective_metric, sagemaker_region (added by SageMaker or its SDK)",
    ]
    assert lines[2] == "tuning_objective: val_acc printed: no" and "no validation data" in lines[3]


# ------------------------------------------------------------------------------- inputdataconfig.json


def _input_config(tmp_path: Path, channels: dict[str, dict[str, str]]) -> dict[str, ChannelConfig]:
    path = tmp_path / "inputdataconfig.json"
    path.write_text(json.dumps(channels))
    return read_input_data_config(path)


def test_file_and_fastfile_channels_are_read(tmp_path: Path) -> None:
    channels = _input_config(
        tmp_path,
        {
            "train": {
                "TrainingInputMode": "FastFile",
                "S3DistributionType": "FullyReplicated",
                "RecordWrapperType": "None",
                "ContentType": "application/x-image",
            },
            "validation": {"TrainingInputMode": "File"},  # what the SDK's local mode writes
            "extra": {"TrainingInputMode": "File"},
            "init_model": {"TrainingInputMode": "File"},
        },
    )
    lines = check_channels(channels, num_hosts=2)
    assert lines == [
        "channel: train input_mode: FastFile content_type: application/x-image distribution: FullyReplicated",
        "channel: validation input_mode: File content_type: none distribution: FullyReplicated",
        "channel_ignored: extra (train reads train, validation, test)",
        "channel: init_model input_mode: File (the start weights: pass init_model_dir=/opt/ml/input/data/init_model)",
    ]
    piped = _input_config(
        tmp_path, {"train": {"TrainingInputMode": "File"}, "init_model": {"TrainingInputMode": "Pipe"}}
    )
    with pytest.raises(InputModeError, match="channel 'init_model' uses input mode 'Pipe'"):
        check_channels(piped)
    assert read_input_data_config(tmp_path / "absent.json") == {} and check_channels({}) == []


def test_unexpected_content_type_is_a_warning(tmp_path: Path) -> None:
    channels = _input_config(tmp_path, {"train": {"TrainingInputMode": "File", "ContentType": "text/csv"}})
    assert check_channels(channels)[1].startswith("warning: channel 'train' has ContentType 'text/csv'")
    jpeg = _input_config(tmp_path, {"train": {"TrainingInputMode": "File", "ContentType": "image/jpeg"}})
    assert len(check_channels(jpeg)) == 1


@pytest.mark.parametrize(
    "entry, hosts, message",
    [
        ({"TrainingInputMode": "Pipe"}, 1, "input mode 'Pipe'.*use File or FastFile"),
        ({"TrainingInputMode": "File", "RecordWrapperType": "RecordIO"}, 1, "RecordWrapperType 'RecordIO'"),
        ({"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"}, 2, "ShardedByS3Key on 2 hosts"),
    ],
)
def test_unreadable_channels_are_refused(tmp_path: Path, entry: dict, hosts: int, message: str) -> None:
    with pytest.raises(InputModeError, match=message) as info:
        check_channels(_input_config(tmp_path, {"train": entry}), num_hosts=hosts)
    assert len(str(info.value)) < FAILURE_REASON_LIMIT


def test_sharded_on_one_host_and_a_missing_train_channel(tmp_path: Path) -> None:
    sharded = _input_config(tmp_path, {"train": {"S3DistributionType": "ShardedByS3Key"}})
    assert check_channels(sharded, num_hosts=1)
    misnamed = _input_config(tmp_path, {"training": {"TrainingInputMode": "File"}})
    with pytest.raises(InputModeError, match="no 'train' channel \\(its channels: training\\)"):
        check_channels(misnamed, train_dir_exists=False)
    with pytest.raises(Exception, match="not readable JSON"):
        (tmp_path / "inputdataconfig.json").write_text("{broken")
        read_input_data_config(tmp_path / "inputdataconfig.json")


# ------------------------------------------------------------------------------- end to end


def _run(root: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(), env=subprocess_env(root, **env), capture_output=True, text=True, timeout=240)


def test_a_tuning_job_training_run_completes(tmp_path: Path) -> None:
    """``train`` on exactly what a tuning job of ``binsight-aws tune`` writes (plus the SDK's framework
    keys and a FastFile channel): it runs to the end, and the objective regex reads the value."""
    request = _tiny_tuning_request(lr_range="1e-3:1e-2", batch_sizes=[8], epochs_range="1:2")
    hyperparameters = {**tuning_service_hyperparameters(request), **SDK_FRAMEWORK_KEYS}
    root = make_opt_ml(tmp_path / "opt_ml", hyperparameters, n_bins=30, validation_bins=8)
    (root / "input/config/inputdataconfig.json").write_text(
        json.dumps(
            {
                "train": {
                    "TrainingInputMode": "FastFile",
                    "S3DistributionType": "FullyReplicated",
                    "RecordWrapperType": "None",
                },
                "validation": {
                    "TrainingInputMode": "File",
                    "S3DistributionType": "FullyReplicated",
                    "RecordWrapperType": "None",
                },
            }
        )
    )
    proc = _run(root, TRAINING_JOB_NAME="bs-tune-001-4f2a", TRAINING_JOB_ARN="arn:aws:sagemaker:eu-west-1:1:x")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert not (root / "output/failure").exists() and (root / "model/model.json").is_file()
    out = proc.stdout
    assert "training_job_name: bs-tune-001-4f2a" in out
    assert re.search(
        r"^hyperparameters_ignored: _tuning_objective_metric, sagemaker_container_log_level, .*"
        r"sagemaker_submit_directory \(added by SageMaker or its SDK\)$",
        out,
        re.M,
    ), out[:3000]
    assert "tuning_objective: val_acc printed: yes" in out and "warning:" not in out
    assert "channel: train input_mode: FastFile" in out
    objective = [float(v) for v in re.findall(METRIC_REGEXES["val_acc"], out)]
    history = json.loads((root / "model/history.json").read_text())
    assert objective == pytest.approx([e["val_acc"] for e in history], abs=1e-4) and len(objective) == 2


def test_a_pipe_mode_job_fails_with_the_reason(tmp_path: Path) -> None:
    root = make_opt_ml(tmp_path / "opt_ml", TINY, n_bins=4)
    (root / "input/config/inputdataconfig.json").write_text(json.dumps({"train": {"TrainingInputMode": "Pipe"}}))
    proc = _run(root)
    assert proc.returncode == 1
    reason = (root / "output/failure").read_text()
    assert reason.startswith("InputModeError: channel 'train' uses input mode 'Pipe'") and "FastFile" in reason
    assert "Traceback" not in proc.stderr


def test_the_failure_reason_names_the_key_within_what_sagemaker_keeps(tmp_path: Path) -> None:
    """SageMaker keeps the first 1024 characters of output/failure: the key and the hint come first."""
    root = make_opt_ml(tmp_path / "opt_ml", {**TINY, **SDK_FRAMEWORK_KEYS, "epocs": "3"}, n_bins=4)
    proc = _run(root)
    assert proc.returncode == 2
    kept = (root / "output/failure").read_text()[:FAILURE_REASON_LIMIT]
    assert "unknown hyperparameter 'epocs'" in kept and "did you mean 'epochs'" in kept
