"""Configuration of the serving process: one pydantic model, read from the environment.

SageMaker configures a serving container only through environment variables
(``SAGEMAKER_BIND_TO_PORT``, ``SAGEMAKER_MODEL_SERVER_WORKERS``, ``SAGEMAKER_MAX_PAYLOAD_IN_MB``,
``SAGEMAKER_MODEL_SERVER_TIMEOUT``, ``SAGEMAKER_SAFE_PORT_RANGE``)
and puts the model in ``/opt/ml/model``; the ``BINSIGHT_*`` variables tune the rest.
``serve``'s command-line options are written into the environment before the settings are read,
so every uvicorn worker process sees the same configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.artifact import METADATA_FILE
from service.port_range import SafePortRange

#: SageMaker's fixed model location inside a serving container.
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")

#: A model shipped inside the package (package data), used when nothing else is configured.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"

#: Environment variable -> settings field.
ENV_FIELDS: dict[str, str] = {
    "BINSIGHT_HOST": "host",
    "SAGEMAKER_BIND_TO_PORT": "port",
    "SAGEMAKER_MODEL_SERVER_WORKERS": "workers",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB": "max_payload_mb",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT": "model_server_timeout_s",
    "SAGEMAKER_SAFE_PORT_RANGE": "safe_port_range",
    "BINSIGHT_MAX_BATCH_SIZE": "max_batch_size",
    "BINSIGHT_BATCH_WAIT_MS": "batch_wait_ms",
    "BINSIGHT_RUNTIME": "runtime",
    "BINSIGHT_PRECISION": "precision",
    "BINSIGHT_CACHE_DIR": "cache_dir",
    "BINSIGHT_ORT_THREADS": "ort_threads",
    "BINSIGHT_TORCH_THREADS": "torch_threads",
    "BINSIGHT_DECODE_THREADS": "decode_threads",
    "BINSIGHT_MAX_IMAGE_PIXELS": "max_image_pixels",
    "BINSIGHT_MANUAL_CHECK_CONFIDENCE": "manual_check_confidence",
    "BINSIGHT_MANUAL_CHECK_EXPECTED_PROBABILITY": "manual_check_expected_probability",
    "BINSIGHT_LOG_LEVEL": "log_level",
    "BINSIGHT_ACCESS_LOG": "access_log",
    "BINSIGHT_GRACE_PERIOD_S": "grace_period_s",
}


class SettingsError(ValueError):
    """The environment holds a value the server cannot use; the message names the variable."""


class ModelLocation(BaseModel):
    """Where the model directory was found, or every place that was tried."""

    model_config = ConfigDict(frozen=True)

    path: Path | None = Field(None, description="The model directory, or None when none was found.")
    source: str = Field("", description="Which rule chose it: MODEL_DIR, SM_MODEL_DIR, /opt/ml/model or default.")
    tried: tuple[str, ...] = Field((), description="Each place looked at, with why it was passed over.")

    def not_found_message(self) -> str:
        return (
            "no model found; tried: "
            + "; ".join(self.tried)
            + f". Set MODEL_DIR to a directory holding {METADATA_FILE} and model.pth (as written by `train`)."
        )


def resolve_model_dir(
    environ: Mapping[str, str], sagemaker_dir: Path = SAGEMAKER_MODEL_DIR, default_dir: Path = DEFAULT_MODEL_DIR
) -> ModelLocation:
    """``MODEL_DIR``, else ``SM_MODEL_DIR``, else ``/opt/ml/model`` if it holds a model, else the built-in model.

    An explicitly set variable wins even when its directory is broken: the load then fails with
    a message about that directory instead of silently serving a different model.
    """
    tried: list[str] = []
    for var in ("MODEL_DIR", "SM_MODEL_DIR"):
        value = environ.get(var, "").strip()
        if value:
            return ModelLocation(path=Path(value), source=var, tried=tuple(tried))
        tried.append(f"{var} (not set)")
    for source, candidate in (("/opt/ml/model", sagemaker_dir), ("default", default_dir)):
        if (candidate / METADATA_FILE).is_file():
            return ModelLocation(path=candidate, source=source, tried=tuple(tried))
        tried.append(f"{candidate} (no {METADATA_FILE})")
    return ModelLocation(path=None, source="", tried=tuple(tried))


class ServeSettings(BaseModel):
    """Everything ``serve`` and the app need; build it with :meth:`from_env` or directly in tests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelLocation = Field(..., description="The resolved model directory.")
    host: str = Field("0.0.0.0", description="Interface to bind (BINSIGHT_HOST).")
    port: int = Field(8080, ge=1, le=65535, description="Port (SAGEMAKER_BIND_TO_PORT).")
    workers: int = Field(
        1, ge=1, le=64, description="Worker processes, each with its own model copy (SAGEMAKER_MODEL_SERVER_WORKERS)."
    )
    max_payload_mb: float = Field(
        6.0, gt=0, le=1024, description="Largest request body in MiB (SAGEMAKER_MAX_PAYLOAD_IN_MB)."
    )
    model_server_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "Longest an inference request may take once its body is read; then 504 (SAGEMAKER_MODEL_SERVER_TIMEOUT, "
            "seconds; SageMaker's own default, and its real-time endpoints' limit, is 60)."
        ),
    )
    safe_port_range: SafePortRange = Field(
        None,
        description=(
            "The ports a container may take besides its bind port (SAGEMAKER_SAFE_PORT_RANGE, LOW-HIGH): binsight "
            "takes none; read, checked and logged (service/port_range.py)."
        ),
    )
    max_batch_size: int = Field(
        16,
        ge=1,
        le=1024,
        description="Most images in one forward pass; larger requests run in chunks (BINSIGHT_MAX_BATCH_SIZE).",
    )
    batch_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="Longest a waiting image is held back so that concurrent requests share one forward pass.",
    )
    runtime: Literal["auto", "onnxruntime", "torch"] = Field(
        "auto",
        description="What runs the forward pass (BINSIGHT_RUNTIME): onnxruntime (a graph derived from "
        "model.pth, checked against torch at load; the load fails when it cannot serve), torch, "
        "or auto: ONNX Runtime when installed and equal to torch, else torch (the reason logged).",
    )
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="int8 serves the artifact's model.int8.onnx (made by `python -m training.quantize`) "
        "on ONNX Runtime; only when asked (BINSIGHT_PRECISION).",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where exported ONNX graphs are cached (BINSIGHT_CACHE_DIR); "
        "default ~/.cache/binsight, else a private temp folder.",
    )
    ort_threads: int = Field(
        0,
        ge=0,
        le=512,
        description="ONNX Runtime intra-op threads per worker; 0: the worker's share of the available CPUs less one.",
    )
    torch_threads: int = Field(0, ge=0, le=512, description="torch intra-op threads; 0 keeps torch's default.")
    decode_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads decoding images per worker; 0: the available CPUs divided among the workers (at most 8).",
    )
    max_image_pixels: int = Field(40_000_000, ge=1, description="Larger images are refused (decompression bombs).")
    manual_check_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Below this confidence /predict flags a photo for a manual check; default: the served model's "
            "recommended threshold (model.json, chosen on its validation split), else 0.5."
        ),
    )
    manual_check_expected_probability: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Below this probability of the expected quantity /predict flags a photo for a manual check; default: "
            "the served model's recommended threshold (model.json), else 0.5."
        ),
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    access_log: bool = Field(True, description="Log one line per request (successful /ping calls are left out).")
    grace_period_s: int = Field(
        25,
        ge=3,
        le=3600,
        description=(
            "After SIGTERM: longest the server drains (answers what its connections have sent, /ping 503) "
            "before it exits (BINSIGHT_GRACE_PERIOD_S); below SageMaker's 30 s before SIGKILL and compose's "
            "stop_grace_period (service/server.py)."
        ),
    )

    @model_validator(mode="after")
    def _int8_needs_onnxruntime(self) -> "ServeSettings":
        if self.precision == "int8" and self.runtime == "torch":
            raise ValueError(
                "BINSIGHT_PRECISION=int8 runs on ONNX Runtime; set BINSIGHT_RUNTIME to auto or onnxruntime"
            )
        return self

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1024 * 1024)

    @property
    def cpus_per_worker(self) -> int:
        """The CPUs this process may use (containers and taskset narrow it) shared among the workers."""
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        return max(1, cpus // self.workers)

    @property
    def decode_workers(self) -> int:
        return self.decode_threads or max(1, min(8, self.cpus_per_worker))

    @property
    def runtime_threads(self) -> int:
        """ONNX Runtime intra-op threads per worker: BINSIGHT_ORT_THREADS, else the worker's share of the
        CPUs less one, which decoding and HTTP keep busy (measured on 2 cores: 1 forward thread served
        more images end to end than 2, with a tighter p99, because the forward's threads no longer wait
        for a sibling that a decode thread has pushed off its core)."""
        return self.ort_threads or max(1, self.cpus_per_worker - 1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "ServeSettings":
        """Read the settings from ``environ`` (default ``os.environ``); ``overrides`` win over it."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for var, field in ENV_FIELDS.items():
            raw = environ.get(var)
            if raw is not None and raw.strip() != "":
                lowered = field in ("log_level", "runtime", "precision")
                values[field] = raw.strip().lower() if lowered else raw.strip()
        values.update(overrides)
        values.setdefault("model", resolve_model_dir(environ))
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            by_field = {field: var for var, field in ENV_FIELDS.items()}
            problems = []
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else ""
                if not field:  # a check across fields: its message names the variables
                    problems.append(error["msg"].removeprefix("Value error, "))
                    continue
                name = by_field.get(field, field) if field not in overrides else field
                problems.append(f"{name}={values.get(field)!r}: {error['msg']}")
            raise SettingsError("invalid serving configuration: " + "; ".join(problems)) from None
