"""``train``: a SageMaker training job with binsight's training image (CreateTrainingJob, no SDK).

The container runs ``train`` (see :mod:`training.__main__`): channels are mounted under
``/opt/ml/input/data/<channel>``, hyperparameters (all strings) land in ``hyperparameters.json``,
``/opt/ml/model`` becomes ``<output>/<job>/output/model.tar.gz`` (the layout the serving image
loads) and, for spot jobs, ``/opt/ml/checkpoints`` is synced with the checkpoint prefix so an
interrupted job resumes. Metrics come from the log lines the training loop prints, e.g.
``epoch: 3 train_loss: 0.8100 train_acc: 0.4100 val_loss: 0.9500 val_acc: 0.3800 ...``; their names are
:data:`training.metric_names.CHARTED`, the same the loop prints from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from binsight_aws.cloudwatch import TRAINING_LOG_GROUP, LogFollower
from binsight_aws.configs import CHECKPOINT_LOCAL_PATH, JobConfig, TrainingJobConfig
from binsight_aws.session import AwsClients
from binsight_aws.status import job_ended, wait_for_status
from binsight_aws.validate import InputError
from training.log import Log, print_line
from training.metric_names import CHARTED

#: A number as the training loop prints it (:func:`training.log.format_value`): 0.4100, 3, 3.000e-04, -1.5
NUMBER = r"([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)"
#: name -> regex over a log line. ``\b`` keeps ``val_acc`` from matching inside ``best_val_acc``.
METRIC_REGEXES: dict[str, str] = {name: rf"\b{name}: {NUMBER}" for name in CHARTED}
OBJECTIVE_METRIC = "val_acc"
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def metric_definitions() -> list[dict[str, str]]:
    return [{"Name": name, "Regex": regex} for name, regex in METRIC_REGEXES.items()]


def check_hyperparameters(hyperparameters: Mapping[str, str], tuned: tuple[str, ...] = ()) -> None:
    """Refuse keys or values the training container would reject, before the job is paid for."""
    from training.config import ConfigError, build_config  # torch import: only when a job is made

    try:
        build_config([("--hp", {k: v for k, v in hyperparameters.items() if k not in tuned})])
    except ConfigError as exc:
        raise InputError(str(exc)) from None


def input_data_config(channels: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "ChannelName": name,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": uri.rstrip("/") + "/",
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "InputMode": "File",
            "CompressionType": "None",
        }
        for name, uri in channels.items()
    ]


def job_parts(config: JobConfig) -> dict[str, Any]:
    """What CreateTrainingJob and a tuning job's TrainingJobDefinition share."""
    parts: dict[str, Any] = {
        "RoleArn": config.role_arn,
        "InputDataConfig": input_data_config(config.channels()),
        "OutputDataConfig": {"S3OutputPath": config.output_uri},
        "ResourceConfig": {
            "InstanceType": config.instance_type,
            "InstanceCount": config.instance_count,
            "VolumeSizeInGB": config.volume_size_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": config.max_runtime_s},
        "EnableManagedSpotTraining": config.spot,
    }
    if config.spot:
        parts["StoppingCondition"]["MaxWaitTimeInSeconds"] = config.max_wait_s
    if config.checkpoint_uri:
        parts["CheckpointConfig"] = {"S3Uri": config.checkpoint_uri, "LocalPath": CHECKPOINT_LOCAL_PATH}
    return parts


#: Where the training report writes TensorBoard scalars in the container (training.report.run_report).
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"


def training_job_request(config: TrainingJobConfig) -> dict[str, Any]:
    tensorboard = (
        {"TensorBoardOutputConfig": {"S3OutputPath": config.tensorboard_uri, "LocalPath": TENSORBOARD_LOCAL_PATH}}
        if config.tensorboard_uri
        else {}
    )
    return {
        "TrainingJobName": config.job_name,
        "HyperParameters": dict(config.hyperparameters),
        "AlgorithmSpecification": {
            "TrainingImage": config.image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": metric_definitions(),
            "EnableSageMakerMetricsTimeSeries": True,
        },
        **job_parts(config),
        **tensorboard,
        "Tags": [{"Key": "project", "Value": "binsight"}],
    }


def _last_message(description: Mapping[str, Any]) -> str | None:
    transitions = description.get("SecondaryStatusTransitions") or []
    return transitions[-1].get("StatusMessage") if transitions else None


def wait_for_training_job(
    sagemaker: Any,
    logs: Any | None,
    name: str,
    *,
    poll_s: float,
    log: Log = print_line,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until the job ends, printing status changes and (with ``logs``) its log lines."""
    follower = LogFollower(logs, TRAINING_LOG_GROUP, name, log) if logs is not None else None
    return wait_for_status(
        lambda: sagemaker.describe_training_job(TrainingJobName=name),
        "TrainingJobStatus",
        job_ended,
        name="job_status",
        details=lambda d: {"secondary_status": d.get("SecondaryStatus"), "message": _last_message(d)},
        each=(lambda d: follower.poll()) if follower is not None else None,
        poll_s=poll_s,
        log=log,
        sleep=sleep,
    )


def report(description: Mapping[str, Any], log: Log = print_line) -> int:
    """Print the outcome: status, time billed and spot savings, artifact, final metrics."""
    status = description["TrainingJobStatus"]
    log(f"job_result: {description['TrainingJobName']} status: {status}")
    billable = description.get("BillableTimeInSeconds")
    training = description.get("TrainingTimeInSeconds")
    if billable is not None or training is not None:
        line = f"billable_seconds: {billable} training_seconds: {training}"
        if description.get("EnableManagedSpotTraining") and billable is not None and training:
            line += f" spot_savings_percent: {100.0 * (1 - billable / training):.1f}"
        log(line)
    for metric in description.get("FinalMetricDataList") or []:
        log(f"final_metric: {metric.get('MetricName')}: {metric.get('Value')}")
    artifacts = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if artifacts and status == "Completed":
        log(f"model_artifact: {artifacts}")
    if description.get("FailureReason"):
        log(f"failure_reason: {description['FailureReason']}")
    return EXIT_OK if status == "Completed" else EXIT_FAILED


def run(
    config: TrainingJobConfig,
    log: Log = print_line,
    clients: AwsClients | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    check_hyperparameters(config.hyperparameters)
    request = training_job_request(config)
    clients = clients or AwsClients.for_command(config)
    sagemaker = clients.client("sagemaker")
    arn = sagemaker.create_training_job(**request)["TrainingJobArn"]
    log(
        f"training_job: {config.job_name} arn: {arn} instance_type: {config.instance_type} "
        f"instance_count: {config.instance_count} spot: {str(config.spot).lower()}"
    )
    if not config.wait:
        return EXIT_OK
    try:
        description = wait_for_training_job(
            sagemaker,
            clients.client("logs") if config.stream_logs else None,
            config.job_name,
            poll_s=config.poll_s,
            log=log,
            sleep=sleep,
        )
    except KeyboardInterrupt:
        log(
            f"detached: the job keeps running; stop it with: aws sagemaker stop-training-job "
            f"--training-job-name {config.job_name}"
        )
        return EXIT_INTERRUPTED
    return report(description, log)
