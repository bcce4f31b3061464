"""The hyperparameters SageMaker and its SDKs add to ``hyperparameters.json``: never ours, so ``train``
ignores them (and logs which), while a user's misspelt key is still refused.

What adds what (checked against the SageMaker Python SDK 2.257 source and the SageMaker training toolkit):

* **Automatic Model Tuning** adds ``_tuning_objective_metric`` (the objective's ``MetricName``) to every
  training job it launches; the SDK strips it again when it reads a tuning job back ("reserved by
  SageMaker for tuning jobs"). Its value is sometimes JSON-quoted (``'"val_acc"'``).
* **The SDK's framework estimators** (script mode) add ``sagemaker_program``, ``sagemaker_submit_directory``,
  ``sagemaker_container_log_level``, ``sagemaker_job_name``, ``sagemaker_region``, and for distribution
  ``sagemaker_mpi_*``, ``sagemaker_distributed_dataparallel_*``, ``sagemaker_torch_distributed_enabled``,
  ``sagemaker_instance_type``, ...; ``HyperparameterTuner`` adds ``sagemaker_estimator_class_name`` and
  ``sagemaker_estimator_module``. The training toolkit reserves the whole ``sagemaker_`` prefix.

So: every key starting with ``sagemaker_``, and ``_tuning_objective_metric``, is the platform's. Nothing
else is: the built-in algorithms' own underscore keys (``_kvstore``, ``_log_level``) are not sent to a
custom image, and a key such as ``_lr`` is a mistake worth refusing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from training.metric_names import (
    CHARTED,
    EPOCH_DATA_WAIT_SHARE,
    EPOCH_IMAGES_PER_S,
    EPOCH_METRICS,
    GRAD_NORM,
    IMAGES_PER_S,
    PEAK_MEMORY_MB,
    REPORT_ISSUES,
    STEP_LOSS,
    STEP_TIMING_METRICS,
    TEST_METRICS,
)

RESERVED_PREFIX = "sagemaker_"
TUNING_OBJECTIVE_KEY = "_tuning_objective_metric"

#: The ``sagemaker_`` keys the SDK 2.257 source writes into a job's hyperparameters (for the record and the
#: tests; the rule is the prefix, so keys a later SDK adds are ignored too).
SDK_KEYS = (
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_container_log_level",
    "sagemaker_job_name",
    "sagemaker_region",
    "sagemaker_enable_cloudwatch_metrics",
    "sagemaker_s3_output",
    "sagemaker_estimator_class_name",
    "sagemaker_estimator_module",
    "sagemaker_instance_type",
    "sagemaker_mpi_enabled",
    "sagemaker_mpi_num_of_processes_per_host",
    "sagemaker_mpi_custom_mpi_options",
    "sagemaker_parameter_server_enabled",
    "sagemaker_distributed_dataparallel_enabled",
    "sagemaker_distributed_dataparallel_custom_mpi_options",
    "sagemaker_torch_distributed_enabled",
    "sagemaker_pytorch_xla_multi_worker_enabled",
    "sagemaker_training_compiler_enabled",
    "sagemaker_network_interface_name",
)


def is_platform_key(key: str) -> bool:
    """True for a hyperparameter that SageMaker or one of its SDKs adds (see the module docstring)."""
    return key.startswith(RESERVED_PREFIX) or key == TUNING_OBJECTIVE_KEY


def _unquoted(value: Any) -> str:
    text = str(value).strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


@dataclass(frozen=True)
class PlatformHyperparameters:
    """The platform's keys of one ``hyperparameters.json``: all of them, and the tuning objective if any."""

    ignored: tuple[str, ...] = ()
    tuning_objective: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> PlatformHyperparameters:
        platform = {str(k): str(v) for k, v in values.items() if isinstance(k, str) and is_platform_key(k)}
        objective = platform.get(TUNING_OBJECTIVE_KEY)
        return cls(
            ignored=tuple(sorted(platform)),
            tuning_objective=_unquoted(objective) if objective else None,
            values=platform,
        )


def printed_metrics(*, has_validation: bool, has_test: bool, step_lines: bool, report: bool = True) -> tuple[str, ...]:
    """The charted figures a run with this data prints (the names of :mod:`training.metric_names`)."""
    printed = [m for m in EPOCH_METRICS if has_validation or not m.startswith("val_")]
    printed += [EPOCH_IMAGES_PER_S, EPOCH_DATA_WAIT_SHARE, PEAK_MEMORY_MB]
    if has_test:
        printed += TEST_METRICS.values()
    if step_lines:
        printed += [STEP_LOSS, IMAGES_PER_S, *STEP_TIMING_METRICS]
    if report:
        printed += [GRAD_NORM, REPORT_ISSUES]
    return tuple(printed)


def objective_warning(objective: str, printed: tuple[str, ...]) -> str | None:
    """Why the tuning job would read no value for ``objective`` from this run; ``None`` when it will."""
    if objective in printed:
        return None
    if objective in CHARTED:
        return (
            f"tuning objective {objective!r} is one of binsight's metrics, but this run does not print it "
            f"(no {'validation' if objective.startswith('val_') else 'test'} data or no step lines); "
            f"the tuning job will get no objective value from this job. Printed: {', '.join(printed)}"
        )
    return (
        f"tuning objective {objective!r} is not a metric binsight prints, so the tuning job will get no "
        f"objective value from this job; tune one of: {', '.join(printed)} (binsight-aws tune uses "
        "val_acc and registers a metric definition for each)"
    )


def log_lines(platform: PlatformHyperparameters, printed: tuple[str, ...]) -> list[str]:
    """``key: value`` lines saying what was ignored and whether the tuning objective will be found."""
    lines = []
    if platform.ignored:
        lines.append(f"hyperparameters_ignored: {', '.join(platform.ignored)} (added by SageMaker or its SDK)")
    if platform.tuning_objective is not None:
        warning = objective_warning(platform.tuning_objective, printed)
        lines.append(f"tuning_objective: {platform.tuning_objective} printed: {'no' if warning else 'yes'}")
        if warning:
            lines.append(f"warning: {warning}")
    return lines
