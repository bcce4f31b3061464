"""``train`` (and ``python -m training``): the SageMaker training entry point, equally usable locally.

SageMaker runs ``docker run IMAGE train``; the leading ``train`` is accepted and ignored. Paths
default to ``/opt/ml`` (see :mod:`training.sagemaker_env`); hyperparameters come from
``hyperparameters.json``, ``BINSIGHT_<NAME>`` variables and ``--<name>`` options (see
:mod:`training.config`). Locally::

    train --data-dir ../shared/abid --model-dir out/model --checkpoint-dir out/ckpt \\
          --output-dir out/metrics --epochs 10 --limit 2000

Exit status: 0 done, 1 failed (reason in output/failure), 2 bad hyperparameters or options
(reason in output/failure), 143 stopped by SIGTERM after saving a checkpoint (run again to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from dataclasses import asdict
from typing import Sequence

from service.architectures import ArchitectureError
from service.artifact import ArtifactError
from service.options import add_options, cli_values
from training.checkpoint import CheckpointError
from training.config import ENV_PREFIX, ConfigError, TrainConfig, load_config
from training.distributed import in_torchrun_worker, launch, plan_launch
from training.init_weights import check_init_model
from training.layouts import DataError
from training.log import print_line
from training.sagemaker_env import (
    RunPaths,
    SageMakerEnvError,
    clear_failure,
    path_variables,
    read_resource_config,
    resolve_paths,
    write_failure,
)
from training.sagemaker_job import job_lines

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_INTERRUPTED = 143  # 128 + SIGTERM

#: CLI option -> RunPaths field
PATH_OPTIONS = {
    "--opt-ml": "root",
    "--data-dir": "train",
    "--validation-dir": "validation",
    "--test-dir": "test",
    "--model-dir": "model_dir",
    "--checkpoint-dir": "checkpoint_dir",
    "--output-dir": "output_data_dir",
    "--failure-file": "failure_file",
    "--hyperparameters": "hyperparameters",
    "--resource-config": "resource_config",
}
PATH_HELP = {
    "root": "root of the SageMaker tree (default /opt/ml)",
    "train": "train channel: ABID or count-folder layout (default <root>/input/data/train)",
    "validation": "optional validation channel (default <root>/input/data/validation when it exists)",
    "test": "optional test channel (default <root>/input/data/test when it exists)",
    "model_dir": "where the artifact goes (default <root>/model)",
    "checkpoint_dir": "checkpoints; a run finding one here resumes (default <root>/checkpoints)",
    "output_data_dir": "where metrics.json goes (default <root>/output/data)",
    "failure_file": "failure reason on error (default <root>/output/failure)",
    "hyperparameters": "hyperparameters JSON, all values strings (default <root>/input/config/hyperparameters.json)",
    "resource_config": "hosts of the job (default <root>/input/config/resourceconfig.json)",
}
KNOWN_ERRORS = (ConfigError, SageMakerEnvError, DataError, CheckpointError, ArtifactError, ArchitectureError, OSError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"command line: {message} (see train --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="train",
        allow_abbrev=False,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    paths = parser.add_argument_group("paths (each also settable in the environment: the variables named, first wins)")
    for flag, dest in PATH_OPTIONS.items():
        paths.add_argument(
            flag,
            dest=f"path_{dest}",
            default=None,
            metavar="PATH",
            help=f"{PATH_HELP[dest]} [env {', '.join(path_variables(dest))}]",
        )
    hps = parser.add_argument_group("hyperparameters (also BINSIGHT_<NAME> or hyperparameters.json; CLI wins)")
    add_options(hps, TrainConfig, ENV_PREFIX, dest_prefix="hp_", as_strings=True, unset="auto")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved paths and config, then exit")
    return parser


def _path_overrides(argv: Sequence[str]) -> dict[str, str | None]:
    """The path options alone, read leniently (the full parse may fail on another option)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, dest in PATH_OPTIONS.items():
        parser.add_argument(flag, dest=dest, default=None)
    try:
        known, _ = parser.parse_known_args(argv)
    except SystemExit:  # e.g. a path option without its value; the full parse reports it
        return {}
    return vars(known)


def _fail(paths: RunPaths | None, message: str, code: int, worker: bool) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if paths is None:
        paths = resolve_paths()
    # No /opt/ml on a workstation: do not create one just to hold the reason (it is on stderr).
    in_tree = paths.root.is_dir() or not paths.failure_file.is_relative_to(paths.root)
    if in_tree and not (worker and paths.failure_file.exists()):  # the first worker to fail tells why
        write_failure(paths.failure_file, message)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        argv = argv[1:]
    worker = in_torchrun_worker()
    is_main = not worker or os.environ.get("RANK", "0") == "0"
    paths: RunPaths | None = None
    try:
        paths = resolve_paths(_path_overrides(argv))  # first, so that even a bad option is reported there
        args = build_parser().parse_args(argv)
        if not worker:
            clear_failure(paths.failure_file)
        config = load_config(cli=cli_values(args, TrainConfig, "hp_"), hyperparameters_file=paths.hyperparameters)
        check_init_model(config)  # a wrong start model fails here, before the data is read
        if args.dry_run:
            print(
                json.dumps(
                    {"paths": {k: str(v) for k, v in asdict(paths).items()}, "config": config.model_dump(mode="json")},
                    indent=2,
                )
            )
            return 0
        if is_main:
            for line in paths.as_log_lines():
                print_line(line)
        if not worker:
            for line in job_lines(config, paths):  # SageMaker's keys, tuning objective, channels; may raise
                print_line(line)
            plan = plan_launch(config, read_resource_config(paths.resource_config))
            if plan.world_size > 1:
                code, interrupted = launch(plan, argv, print_line)
                if code != 0 and not interrupted and not paths.failure_file.exists():
                    write_failure(
                        paths.failure_file,
                        f"distributed training failed: torchrun exited with {code}; see the log of each rank",
                    )
                return EXIT_INTERRUPTED if interrupted and code != 0 else code
        from training.loop import run_training  # only a real run needs the loop and its imports

        result = run_training(config, paths, log=print_line)
        return 0 if result.status == "completed" else EXIT_INTERRUPTED
    except ConfigError as exc:
        return _fail(paths, str(exc), EXIT_BAD_CONFIG, worker)
    except KNOWN_ERRORS as exc:
        return _fail(paths, f"{type(exc).__name__}: {exc}", EXIT_FAILED, worker)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # a bug: keep the traceback in the log, the reason in the failure file
        traceback.print_exc()
        return _fail(paths, f"unexpected error: {type(exc).__name__}: {exc}", EXIT_FAILED, worker)


if __name__ == "__main__":
    sys.exit(main())
