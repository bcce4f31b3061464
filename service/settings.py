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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.artifact import METADATA_FILE
from service.model_metadata import TestTimeView
from service.options import env_names, env_values, error_lines
from service.port_range import SafePortRange

#: SageMaker's fixed model location inside a serving container.
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")

#: A model shipped inside the package (package data), used when nothing else is configured.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"

#: The prefix of serve's own variables; SageMaker's keep their names (``json_schema_extra["env"]``).
ENV_PREFIX = "BINSIGHT_"


def _sagemaker(name: str) -> dict[str, str]:
    return {"env": name}


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

    model: ModelLocation = Field(..., description="The resolved model directory.", json_schema_extra={"env": None})
    host: str = Field("0.0.0.0", description="Interface to bind (BINSIGHT_HOST).")
    port: int = Field(
        8080,
        ge=1,
        le=65535,
        description="Port (SAGEMAKER_BIND_TO_PORT).",
        json_schema_extra=_sagemaker("SAGEMAKER_BIND_TO_PORT"),
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes, each with its own model copy (SAGEMAKER_MODEL_SERVER_WORKERS).",
        json_schema_extra=_sagemaker("SAGEMAKER_MODEL_SERVER_WORKERS"),
    )
    max_payload_mb: float = Field(
        6.0,
        gt=0,
        le=1024,
        description="Largest request body in MiB (SAGEMAKER_MAX_PAYLOAD_IN_MB).",
        json_schema_extra=_sagemaker("SAGEMAKER_MAX_PAYLOAD_IN_MB"),
    )
    model_server_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "Longest an inference request may take once its body is read; then 504 (SAGEMAKER_MODEL_SERVER_TIMEOUT, "
            "seconds; SageMaker's own default, and its real-time endpoints' limit, is 60)."
        ),
        json_schema_extra=_sagemaker("SAGEMAKER_MODEL_SERVER_TIMEOUT"),
    )
    safe_port_range: SafePortRange = Field(
        None,
        description=(
            "The ports a container may take besides its bind port (SAGEMAKER_SAFE_PORT_RANGE, LOW-HIGH): binsight "
            "takes none; read, checked and logged (service/port_range.py)."
        ),
        json_schema_extra=_sagemaker("SAGEMAKER_SAFE_PORT_RANGE"),
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
    test_time_views: list[TestTimeView] | None = Field(
        None,
        description="Comma-separated views of each photo whose probabilities are averaged, one forward pass each "
        "(BINSIGHT_TEST_TIME_VIEWS, e.g. orig or orig,hflip); default: the model's own (model.json's "
        "test_time_views, which its answer rule and manual-check thresholds were tuned with).",
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

    @field_validator("test_time_views", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip().lower() for v in value.split(",") if v.strip()]
        return value

    @field_validator("test_time_views")
    @classmethod
    def _views_distinct(cls, views: list[str] | None) -> list[str] | None:
        if views is not None and (not views or len(set(views)) != len(views)):
            raise ValueError(f"needs one or more distinct views, e.g. orig,hflip; got {views}")
        return views

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
        """Read the settings from ``environ`` (default ``os.environ``); ``overrides`` win over it.

        Through the shared bridge (:func:`service.options.env_values`): ``BINSIGHT_<FIELD>``, or the
        SageMaker variable a field names; values are stripped, choices read case-insensitively."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field, raw in env_values(cls, ENV_PREFIX, environ).items():
            values[field] = raw.strip().lower() if field in ("log_level", "runtime", "precision") else raw.strip()
        values.update(overrides)
        values.setdefault("model", resolve_model_dir(environ))
        try:
            return cls.model_validate(values)
        except ValidationError as exc:

            def where(field: str | None) -> str | None:
                # a check across fields names its variables itself; an override is named by its field
                if field is None:
                    return None
                return field if field in overrides else f"{ENV_FIELDS.get(field, field)}={values.get(field)!r}"

            problems = error_lines(exc, where)
            raise SettingsError("invalid serving configuration: " + "; ".join(problems)) from None


#: Settings field -> the environment variable that sets it.
ENV_FIELDS: dict[str, str] = env_names(ServeSettings, ENV_PREFIX)
