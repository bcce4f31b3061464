"""Options of ``deploy-lambda`` and ``delete-lambda``, checked before any AWS call (no boto3 here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from binsight_aws.configs import CommandConfig
from binsight_aws.lambda_fn.settings import check_prefixes
from binsight_aws.validate import BUCKET_RE, check_role_arn, check_sagemaker_name

FUNCTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Lambda's own bounds.
MEMORY_MIN_MB, MEMORY_MAX_MB = 128, 10_240
TIMEOUT_MAX_S = 900


def _function_name(value: str) -> str:
    if not FUNCTION_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a Lambda function name (letters, digits, - and _, at most 64)")
    return value


class LambdaFunctionConfig(CommandConfig):
    """What both commands name."""

    function_name: str = Field("binsight-count", description="Lambda function name")

    _name = field_validator("function_name")(classmethod(lambda cls, v: _function_name(v)))


class DeployLambdaConfig(LambdaFunctionConfig):
    """deploy-lambda: a Lambda function that counts photos landing in S3 and answers an HTTPS Function URL."""

    endpoint_name: str | None = Field(None, description="SageMaker endpoint the function sends photos to")
    invocations_url: str | None = Field(
        None, description="Instead of an endpoint: a binsight server's base URL (on premises, reachable from Lambda)"
    )
    bucket: str = Field(..., description="Bucket of the photos and the results")
    input_prefix: str = Field("incoming/", min_length=1, description="Photos written under this prefix are counted")
    results_prefix: str = Field("results/", min_length=1, description="Result JSON goes under this prefix")
    trigger: bool = Field(True, description="Count photos as they are written (S3 event notification)")
    function_url: bool = Field(True, description="Give the function an HTTPS Function URL")
    url_auth: Literal["AWS_IAM", "NONE"] = Field(
        "AWS_IAM", description="Function URL auth: AWS_IAM (signed requests), or NONE (anyone on the internet)"
    )
    role_arn: str | None = Field(None, description="Execution role to use (default: create a least-privilege one)")
    model_json: Path | None = Field(
        None, description="model.json of the served model (default: read from the endpoint's model.tar.gz)"
    )
    dependencies_dir: Path | None = Field(
        None,
        description="pydantic for the Lambda platform (pip install --target DIR --platform manylinux2014_x86_64 "
        "--only-binary=:all: --python-version 3.11 pydantic); default: this environment's, when it fits",
    )
    zip_output: Path | None = Field(None, description="Also write the function's zip here")
    memory_mb: int = Field(512, ge=MEMORY_MIN_MB, le=MEMORY_MAX_MB, description="Lambda memory (the model is not here)")
    timeout_s: int = Field(90, ge=3, le=TIMEOUT_MAX_S, description="Lambda timeout (a serverless cold start is slow)")
    max_retry_attempts: int = Field(
        2, ge=0, le=2, description="Retries of an S3 event whose model call failed (corrupt photos are never retried)"
    )
    max_event_age_s: int = Field(3600, ge=60, le=21_600, description="Drop an S3 event still failing after this")
    max_payload_mb: float | None = Field(
        None, gt=0, le=6, description="Largest photo sent (default: 4 for a serverless endpoint, else 6)"
    )
    manual_check_confidence: float | None = Field(None, ge=0, le=1, description="As serve's; default the model's")
    manual_check_expected_probability: float | None = Field(None, ge=0, le=1, description="As serve's")
    wait: bool = Field(True, description="Wait until the function is Active")

    @field_validator("endpoint_name")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_sagemaker_name(value, "endpoint name")

    @field_validator("role_arn")
    @classmethod
    def _role(cls, value: str | None) -> str | None:
        return None if value is None else check_role_arn(value)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not BUCKET_RE.match(value):
            raise ValueError(f"{value!r} is not an S3 bucket name")
        return value

    @field_validator("invocations_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"--invocations-url {value!r} must be http(s)://host[:port]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DeployLambdaConfig:
        if (self.endpoint_name is None) == (self.invocations_url is None):
            raise ValueError("give exactly one of --endpoint-name and --invocations-url")
        for name, prefix in (("--input-prefix", self.input_prefix), ("--results-prefix", self.results_prefix)):
            if prefix.startswith("/") or not prefix.endswith("/"):
                raise ValueError(f"{name} {prefix!r} must be a folder: no leading '/', ending in '/'")
        check_prefixes(self.input_prefix, self.results_prefix)
        for name, path in (("--model-json", self.model_json), ("--dependencies-dir", self.dependencies_dir)):
            if path is not None and not path.exists():
                raise ValueError(f"{name} {path} does not exist")
        if not (self.trigger or self.function_url):
            raise ValueError("nothing would call the function: keep --trigger or --function-url")
        return self


class DeleteLambdaConfig(LambdaFunctionConfig):
    """delete-lambda: the function, its S3 trigger, Function URL and (unless kept) the role deploy-lambda made."""

    keep_role: bool = Field(False, description="Keep the execution role deploy-lambda created")
