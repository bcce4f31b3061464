"""What ``train`` checks and logs about the SageMaker job before it reads data: the job's name, the
hyperparameters SageMaker added (and whether the tuning objective is a metric this run prints), and how
each channel is delivered. Raises for a job that cannot work (:class:`training.input_config.InputModeError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from training.config import TrainConfig, read_hyperparameters_file
from training.input_config import FILE_NAME, check_channels, read_input_data_config
from training.sagemaker_env import RunPaths, read_resource_config
from training.sagemaker_hyperparameters import PlatformHyperparameters, log_lines, printed_metrics

#: Set by SageMaker in every training container (the SDK's local mode sets the first too).
JOB_VARIABLES = ("TRAINING_JOB_NAME", "TRAINING_JOB_ARN")


def printed_by(config: TrainConfig, paths: RunPaths) -> tuple[str, ...]:
    """The charted metrics this run will print, from its config and channels."""
    return printed_metrics(
        has_validation=paths.validation is not None or config.val_fraction > 0,
        has_test=paths.test is not None or config.test_fraction > 0,
        step_lines=config.log_every_steps > 0,
        report=config.report,
    )


def job_lines(config: TrainConfig, paths: RunPaths, environ: Mapping[str, str] | None = None) -> list[str]:
    """The start-up checks of a run, as ``key: value`` lines; raises when a channel cannot be read."""
    environ = os.environ if environ is None else environ
    lines = [f"{name.lower()}: {environ[name]}" for name in JOB_VARIABLES if environ.get(name)]
    platform = PlatformHyperparameters.from_values(read_hyperparameters_file(paths.hyperparameters))
    lines += log_lines(platform, printed_by(config, paths))
    channels = read_input_data_config(paths.hyperparameters.with_name(FILE_NAME))
    lines += check_channels(
        channels, num_hosts=read_resource_config(paths.resource_config).num_hosts, train_dir_exists=paths.train.is_dir()
    )
    return lines
