"""binsight-aws (python -m binsight_aws): one command line for the AWS side of binsight.

Options are generated from the subcommand's pydantic config (:mod:`binsight_aws.configs`) by
:mod:`service.options`: every field ``some_name`` is ``--some-name`` and ``BINSIGHT_AWS_SOME_NAME``
(the command line wins). An
operation's module is imported only when it runs, so ``--help`` needs neither torch nor boto3.

Exit status: 0 done, 1 an AWS operation or a job failed, 2 bad input (nothing was sent), 130 stopped.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from binsight_aws import configs, lambda_configs
from binsight_aws.configs import ENV_PREFIX
from binsight_aws.validate import InputError
from service.options import add_options, error_lines, load_options
from training.log import Log, print_line

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

#: subcommand -> (config model, "module:function" run with (config, log) -> exit status)
COMMANDS: dict[str, tuple[type[BaseModel], str]] = {
    "download-abid": (configs.DownloadAbidConfig, "binsight_aws.download:run"),
    "upload-dataset": (configs.UploadDatasetConfig, "binsight_aws.upload:run"),
    "push-images": (configs.PushImagesConfig, "binsight_aws.ecr:run"),
    "train": (configs.TrainingJobConfig, "binsight_aws.training_job:run"),
    "tune": (configs.TuningJobConfig, "binsight_aws.tuning:run"),
    "package-model": (configs.PackageModelConfig, "binsight_aws.model_package:run"),
    "deploy": (configs.DeployConfig, "binsight_aws.endpoint:run_deploy"),
    "delete-endpoint": (configs.DeleteEndpointConfig, "binsight_aws.endpoint:run_delete"),
    "autoscale": (configs.AutoscaleConfig, "binsight_aws.autoscaling:run"),
    "invoke": (configs.InvokeConfig, "binsight_aws.endpoint:run_invoke"),
    "batch-transform": (configs.BatchTransformConfig, "binsight_aws.transform:run"),
    "deploy-lambda": (lambda_configs.DeployLambdaConfig, "binsight_aws.lambda_deploy:run_deploy"),
    "delete-lambda": (lambda_configs.DeleteLambdaConfig, "binsight_aws.lambda_deploy:run_delete"),
}


class UsageError(Exception):
    """argparse found a bad command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="binsight-aws",
        description=__doc__.split("\n\n")[0],
        epilog="Run 'binsight-aws <command> --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    for command, (model, _) in COMMANDS.items():
        summary = (model.__doc__ or "").strip().splitlines()[0]
        sub_parser = sub.add_parser(command, help=summary.split(": ", 1)[-1], description=summary)
        add_options(sub_parser, model, ENV_PREFIX)
    return parser


def _runner(target: str) -> Callable[[Any, Log], int]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def describe_aws_error(exc: Exception) -> str | None:
    """A one-line message for boto errors, or ``None`` when ``exc`` is not one."""
    try:
        import botocore.exceptions as bex
    except ImportError:  # pragma: no cover - boto3 is in the aws extra
        return None
    if isinstance(exc, bex.NoCredentialsError):
        return (
            "no AWS credentials found: run 'aws configure', set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "or pass --profile"
        )
    if isinstance(exc, bex.NoRegionError):
        return "no AWS region: pass --region or set AWS_REGION"
    if isinstance(exc, bex.ProfileNotFound):
        return str(exc)
    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "AWS call")
        return f"{operation} failed: {error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")
    if isinstance(exc, bex.ParamValidationError):
        return f"request rejected before sending: {exc}"
    if isinstance(exc, bex.BotoCoreError):
        return f"{type(exc).__name__}: {exc}"
    return None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, log: Log = print_line) -> int:
    environ = os.environ if environ is None else environ
    parser = build_parser()
    try:
        args = vars(parser.parse_args(argv))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    command = args.pop("command", None)
    if command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    model, target = COMMANDS[command]
    try:
        config = load_options(model, args, ENV_PREFIX, environ)
    except ValidationError as exc:
        for line in error_lines(exc, env_prefix=ENV_PREFIX):
            print(f"error: {command}: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(_runner(target)(config, log))
    except InputError as exc:
        print(f"error: {command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"error: {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - boto errors become one line; anything else is a bug
        message = describe_aws_error(exc)
        if message is None:
            raise
        print(f"error: {command}: {message}", file=sys.stderr)
        return EXIT_FAILED
