"""``tune``: a SageMaker hyperparameter tuning job that maximises ``val_acc``.

Tuned: ``lr`` (continuous, logarithmic), ``batch_size`` (categorical list or integer range),
``epochs`` (integer) and ``architecture`` (categorical); every other hyperparameter is static.
Each training job is an ordinary ``train`` run of the training image, so the objective is read
from the same log lines as a single job's metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from binsight_aws.configs import TuningJobConfig
from binsight_aws.session import AwsClients
from binsight_aws.status import job_ended, wait_for_status
from binsight_aws.training_job import (
    OBJECTIVE_METRIC,
    check_hyperparameters,
    job_parts,
    metric_definitions,
)
from binsight_aws.validate import InputError
from training.log import Log, Progress, print_line

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def _number(value: float | int) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def parameter_ranges(config: TuningJobConfig) -> dict[str, list[dict[str, Any]]]:
    ranges: dict[str, list[dict[str, Any]]] = {
        "ContinuousParameterRanges": [],
        "IntegerParameterRanges": [],
        "CategoricalParameterRanges": [],
    }
    if config.lr_range:
        lo, hi = config.split_range(config.lr_range, "--lr-range", float)
        ranges["ContinuousParameterRanges"].append(
            {"Name": "lr", "MinValue": _number(lo), "MaxValue": _number(hi), "ScalingType": "Logarithmic"}
        )
    if config.batch_sizes:
        ranges["CategoricalParameterRanges"].append(
            {"Name": "batch_size", "Values": [str(b) for b in dict.fromkeys(config.batch_sizes)]}
        )
    elif config.batch_size_range:
        lo, hi = config.split_range(config.batch_size_range, "--batch-size-range", int)
        ranges["IntegerParameterRanges"].append(
            {"Name": "batch_size", "MinValue": str(lo), "MaxValue": str(hi), "ScalingType": "Linear"}
        )
    if config.epochs_range:
        lo, hi = config.split_range(config.epochs_range, "--epochs-range", int)
        ranges["IntegerParameterRanges"].append(
            {"Name": "epochs", "MinValue": str(lo), "MaxValue": str(hi), "ScalingType": "Linear"}
        )
    if config.architectures:
        ranges["CategoricalParameterRanges"].append(
            {"Name": "architecture", "Values": list(dict.fromkeys(config.architectures))}
        )
    return {k: v for k, v in ranges.items() if v}


def tuning_job_request(config: TuningJobConfig) -> dict[str, Any]:
    tuning_config: dict[str, Any] = {
        "Strategy": config.strategy,
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": OBJECTIVE_METRIC},
        "ResourceLimits": {
            "MaxNumberOfTrainingJobs": config.max_jobs,
            "MaxParallelTrainingJobs": config.max_parallel_jobs,
        },
        "ParameterRanges": parameter_ranges(config),
    }
    if config.strategy != "Hyperband":
        tuning_config["TrainingJobEarlyStoppingType"] = config.early_stopping
    definition = {
        "StaticHyperParameters": dict(config.hyperparameters),
        "AlgorithmSpecification": {
            "TrainingImage": config.image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": metric_definitions(),
        },
        **job_parts(config),
    }
    return {
        "HyperParameterTuningJobName": config.tuning_job_name,
        "HyperParameterTuningJobConfig": tuning_config,
        "TrainingJobDefinition": definition,
        "Tags": [{"Key": "project", "Value": "binsight"}],
    }


def check_architectures(names: list[str] | None) -> None:
    if not names:
        return
    from service.architectures import architecture_names  # torch import: only when a job is made

    known = architecture_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown architecture(s) {', '.join(unknown)}; known: {', '.join(known)}")


def wait_for_tuning_job(
    sagemaker: Any,
    name: str,
    total: int,
    *,
    poll_s: float,
    log: Log = print_line,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    def details(description: Mapping[str, Any]) -> dict[str, Any]:
        counters = description.get("TrainingJobStatusCounters") or {}
        best = (description.get("BestTrainingJob") or {}).get("FinalHyperParameterTuningJobObjectiveMetric")
        return {
            "completed": counters.get("Completed", 0),
            "in_progress": counters.get("InProgress", 0),
            "failed": int(counters.get("NonRetryableError", 0)) + int(counters.get("RetryableError", 0)),
            "best_val_acc": best.get("Value") if best else None,
        }

    with Progress("tuning", total=total, unit="job", log=log, interval_s=poll_s) as progress:

        def count_finished(description: Mapping[str, Any]) -> None:
            counters = description.get("TrainingJobStatusCounters") or {}
            finished = sum(
                int(counters.get(k, 0)) for k in ("Completed", "RetryableError", "NonRetryableError", "Stopped")
            )
            if finished > progress.done:
                progress.update(finished - progress.done)

        return wait_for_status(
            lambda: sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
            "HyperParameterTuningJobStatus",
            job_ended,
            name="tuning_status",
            details=details,
            each=count_finished,
            poll_s=poll_s,
            log=log,
            sleep=sleep,
        )


def report(description: Mapping[str, Any], sagemaker: Any, log: Log = print_line) -> int:
    status = description["HyperParameterTuningJobStatus"]
    log(f"tuning_result: {description['HyperParameterTuningJobName']} status: {status}")
    best = description.get("BestTrainingJob")
    if best:
        objective = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
        log(
            f"best_training_job: {best.get('TrainingJobName')} {objective.get('MetricName', OBJECTIVE_METRIC)}: "
            f"{objective.get('Value')}"
        )
        for key, value in sorted((best.get("TunedHyperParameters") or {}).items()):
            log(f"best_hyperparameter: {key}: {value}")
        try:
            job = sagemaker.describe_training_job(TrainingJobName=best["TrainingJobName"])
            artifacts = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
            if artifacts:
                log(f"best_model_artifact: {artifacts}")
        except Exception as exc:  # noqa: BLE001 - the best job is reported even if it cannot be described
            log(f"best_model_artifact: unknown ({type(exc).__name__})")
    else:
        log("best_training_job: none (no training job reported the objective)")
    if description.get("FailureReason"):
        log(f"failure_reason: {description['FailureReason']}")
    return EXIT_OK if status == "Completed" and best else EXIT_FAILED


def run(
    config: TuningJobConfig,
    log: Log = print_line,
    clients: AwsClients | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    check_hyperparameters(config.hyperparameters)
    check_architectures(config.architectures)
    request = tuning_job_request(config)
    clients = clients or AwsClients.for_command(config)
    sagemaker = clients.client("sagemaker")
    arn = sagemaker.create_hyper_parameter_tuning_job(**request)["HyperParameterTuningJobArn"]
    log(
        f"tuning_job: {config.tuning_job_name} arn: {arn} tuned: {', '.join(config.tuned_names())} "
        f"max_jobs: {config.max_jobs} max_parallel_jobs: {config.max_parallel_jobs} objective: {OBJECTIVE_METRIC} "
        "(maximise)"
    )
    if config.checkpoint_uri:
        log(
            f"checkpoint_note: every training job of the tuning job gets CheckpointConfig {config.checkpoint_uri}; "
            "binsight's training refuses a checkpoint made with other hyperparameters, so trials sharing that "
            "prefix fail instead of mixing; leave --checkpoint-uri out to have interrupted spot trials start over"
        )
    if not config.wait:
        return EXIT_OK
    try:
        description = wait_for_tuning_job(
            sagemaker, config.tuning_job_name, config.max_jobs, poll_s=config.poll_s, log=log, sleep=sleep
        )
    except KeyboardInterrupt:
        log(
            f"detached: the tuning job keeps running; stop it with: aws sagemaker stop-hyper-parameter-tuning-job "
            f"--hyper-parameter-tuning-job-name {config.tuning_job_name}"
        )
        return EXIT_INTERRUPTED
    return report(description, sagemaker, log)
