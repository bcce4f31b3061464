"""The function's configuration: ``BINSIGHT_LAMBDA_<FIELD>`` variables (set by ``deploy-lambda``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.options import error_lines, load_options

ENV_PREFIX = "BINSIGHT_LAMBDA_"
#: model.json of the served model, written into the zip by deploy-lambda (labels, manual-check thresholds).
BUNDLED_MODEL_JSON = "binsight_model.json"


class LambdaSettings(BaseModel):
    """Where the model answers, which S3 prefixes the trigger reads and writes, and the manual-check thresholds."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    endpoint_name: str | None = Field(None, description="SageMaker endpoint the photos go to")
    invocations_url: str | None = Field(
        None, description="Instead of an endpoint: a binsight server (http(s)://host:port; its /invocations)"
    )
    bucket: str | None = Field(None, description="The trigger's bucket (the only one s3:// references may name)")
    input_prefix: str = Field("incoming/", min_length=1, description="Photos are read under this prefix")
    results_prefix: str = Field("results/", min_length=1, description="Results are written under this prefix")
    model_json: Path | None = Field(None, description="model.json of the served model (default: the bundled one)")
    max_payload_mb: float = Field(4.0, gt=0, le=6, description="Largest photo sent to the model (serverless: 4)")
    manual_check_confidence: float | None = Field(None, ge=0, le=1, description="As serve's variable of that name")
    manual_check_expected_probability: float | None = Field(None, ge=0, le=1)
    timeout_s: float = Field(60.0, gt=0, le=900, description="Longest wait for the model's answer")

    @model_validator(mode="after")
    def _one_model(self) -> LambdaSettings:
        if (self.endpoint_name is None) == (self.invocations_url is None):
            raise ValueError("set exactly one of BINSIGHT_LAMBDA_ENDPOINT_NAME and BINSIGHT_LAMBDA_INVOCATIONS_URL")
        check_prefixes(self.input_prefix, self.results_prefix)
        return self

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 2**20)

    def model_json_path(self) -> Path:
        if self.model_json is not None:
            return self.model_json
        root = os.environ.get("LAMBDA_TASK_ROOT") or Path(__file__).resolve().parents[2]
        return Path(root) / BUNDLED_MODEL_JSON


def check_prefixes(input_prefix: str, results_prefix: str) -> None:
    """Neither prefix under the other: a result written under the input prefix would trigger the function again."""
    if input_prefix.startswith(results_prefix) or results_prefix.startswith(input_prefix):
        raise ValueError(
            f"the input prefix {input_prefix!r} and the results prefix {results_prefix!r} must not contain one "
            "another (a result written under the input prefix would trigger the function again)"
        )


class SettingsError(ValueError):
    """The function's environment cannot be used; the message names the variables."""


def load_settings(environ: Mapping[str, str] | None = None) -> LambdaSettings:
    from pydantic import ValidationError

    try:
        return load_options(LambdaSettings, {}, ENV_PREFIX, os.environ if environ is None else environ)
    except ValidationError as exc:
        raise SettingsError("; ".join(error_lines(exc, lambda f: f and ENV_PREFIX + f.upper()))) from None
