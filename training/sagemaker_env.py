"""The SageMaker training container's file contract, with every path overridable for local runs.

SageMaker mounts everything under ``/opt/ml``::

    input/config/hyperparameters.json   all values are strings
    input/config/resourceconfig.json    {"current_host": "algo-1", "hosts": ["algo-1", ...]}
    input/data/<channel>/               train, optional validation and test
    model/                              tarred into model.tar.gz after the job
    output/data/                        tarred into output.tar.gz (metrics)
    output/failure                      its text becomes the job's FailureReason
    checkpoints/                        synced with S3 when checkpointing is configured (spot)

Each path resolves, first match wins: an explicit override (the CLI) > ``BINSIGHT_*`` variable
> SageMaker's ``SM_*`` variable > the default under the root (``BINSIGHT_OPT_ML`` or ``/opt/ml``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

DEFAULT_ROOT = Path("/opt/ml")
ROOT_ENV = "BINSIGHT_OPT_ML"

#: SageMaker reads at most this much of output/failure as the FailureReason.
FAILURE_REASON_LIMIT = 1024


class SageMakerEnvError(ValueError):
    """The container's configuration files are unreadable or inconsistent."""


@dataclass(frozen=True)
class RunPaths:
    root: Path
    hyperparameters: Path
    resource_config: Path
    train: Path
    validation: Path | None
    test: Path | None
    model_dir: Path
    output_data_dir: Path
    failure_file: Path
    checkpoint_dir: Path

    def as_log_lines(self) -> list[str]:
        return [f"path_{name}: {value}" for name, value in asdict(self).items()]


#: field -> (BINSIGHT variable, SageMaker variable or None, default relative to the root)
_PATH_RULES: dict[str, tuple[str, str | None, str]] = {
    "hyperparameters": ("BINSIGHT_HYPERPARAMETERS", None, "input/config/hyperparameters.json"),
    "resource_config": ("BINSIGHT_RESOURCE_CONFIG", None, "input/config/resourceconfig.json"),
    "train": ("BINSIGHT_DATA_DIR", "SM_CHANNEL_TRAIN", "input/data/train"),
    "validation": ("BINSIGHT_VALIDATION_DIR", "SM_CHANNEL_VALIDATION", "input/data/validation"),
    "test": ("BINSIGHT_TEST_DIR", "SM_CHANNEL_TEST", "input/data/test"),
    "model_dir": ("BINSIGHT_MODEL_DIR", "SM_MODEL_DIR", "model"),
    "output_data_dir": ("BINSIGHT_OUTPUT_DATA_DIR", "SM_OUTPUT_DATA_DIR", "output/data"),
    "failure_file": ("BINSIGHT_FAILURE_FILE", None, "output/failure"),
    "checkpoint_dir": ("BINSIGHT_CHECKPOINT_DIR", None, "checkpoints"),
}
_OPTIONAL_CHANNELS = ("validation", "test")


def path_variables(name: str) -> tuple[str, ...]:
    """The variables that set the :class:`RunPaths` field ``name`` (``root``: :data:`ROOT_ENV`), first wins."""
    if name == "root":
        return (ROOT_ENV,)
    own, sagemaker, _ = _PATH_RULES[name]
    return (own,) if sagemaker is None else (own, sagemaker)


def resolve_paths(
    overrides: Mapping[str, str | os.PathLike | None] | None = None, environ: Mapping[str, str] | None = None
) -> RunPaths:
    """All paths of a run. ``overrides`` keys are :class:`RunPaths` field names (plus ``root``).

    The validation and test channels are optional: a default location that does not exist gives
    ``None``; an explicitly named one is kept (and fails later, clearly, if it is missing).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v not in (None, "")}
    environ = os.environ if environ is None else environ
    root = Path(overrides.get("root") or environ.get(ROOT_ENV) or DEFAULT_ROOT)
    config_dir = environ.get("SM_INPUT_CONFIG_DIR")
    output_dir = environ.get("SM_OUTPUT_DIR")
    values: dict[str, Path | None] = {"root": root}
    for name, (own_var, sm_var, default) in _PATH_RULES.items():
        explicit = overrides.get(name) or environ.get(own_var) or (environ.get(sm_var) if sm_var else None)
        if explicit is None and name in ("hyperparameters", "resource_config") and config_dir:
            explicit = str(Path(config_dir) / Path(default).name)
        if explicit is None and name == "failure_file" and output_dir:
            explicit = str(Path(output_dir) / "failure")
        if explicit is not None:
            values[name] = Path(explicit)
        elif name in _OPTIONAL_CHANNELS:
            values[name] = root / default if (root / default).exists() else None
        else:
            values[name] = root / default
    return RunPaths(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ResourceConfig:
    """The hosts of a (possibly multi-host) training job."""

    current_host: str = "algo-1"
    hosts: tuple[str, ...] = ("algo-1",)
    network_interface_name: str | None = None

    @property
    def num_hosts(self) -> int:
        return len(self.hosts)

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def master_host(self) -> str:
        return self.hosts[0]


def read_resource_config(path: str | os.PathLike) -> ResourceConfig:
    """``resourceconfig.json``; a missing file means one host (local runs)."""
    path = Path(path)
    if not path.exists():
        return ResourceConfig()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SageMakerEnvError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SageMakerEnvError(f"{path} must hold a JSON object")
    hosts = raw.get("hosts") or [raw.get("current_host") or "algo-1"]
    current = raw.get("current_host") or hosts[0]
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise SageMakerEnvError(f"{path}: 'hosts' must be a list of host names, got {hosts!r}")
    if len(set(hosts)) != len(hosts):
        raise SageMakerEnvError(f"{path}: 'hosts' repeats a name: {hosts!r}")
    if current not in hosts:
        raise SageMakerEnvError(f"{path}: current_host {current!r} is not in hosts {hosts!r}")
    return ResourceConfig(
        current_host=current, hosts=tuple(hosts), network_interface_name=raw.get("network_interface_name")
    )


def write_failure(path: str | os.PathLike, message: str) -> None:
    """Write the failure reason where SageMaker looks for it (best effort: never raises)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message.rstrip() + "\n", encoding="utf-8")
    except OSError:
        pass


def clear_failure(path: str | os.PathLike) -> None:
    """Remove a failure file left by an earlier local run, so it cannot be mistaken for this run's."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass
