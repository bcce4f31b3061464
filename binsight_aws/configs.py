"""One pydantic config model per ``binsight-aws`` subcommand.

Every field is a command-line option (``role_arn`` -> ``--role-arn``) and an environment variable
(``BINSIGHT_AWS_ROLE_ARN``); the command line wins. All checks that need no AWS call happen here
(role ARN, S3 URIs, instance types, names, spot settings), so a bad input fails before anything is
sent. This module imports neither torch nor boto3: ``--help`` stays fast.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from binsight_aws.scaling_options import ScalingOptions
from binsight_aws.serverless import ServerlessOptions
from binsight_aws.validate import (
    TUNING_JOB_NAME_MAX,
    check_abid_id,
    check_endpoint_url,
    check_image_uri,
    check_instance_type,
    check_region,
    check_role_arn,
    check_s3_uri,
    check_sagemaker_name,
    parse_s3_uri,
)
from service.options import field_kind

ENV_PREFIX = "BINSIGHT_AWS_"
ABID_BUCKET = "aft-vbi-pds"
ABID_REGION = "us-east-1"
#: SageMaker limits (CreateTrainingJob / StoppingCondition).
MAX_RUNTIME_LIMIT_S = 28 * 24 * 3600
HYPERPARAMETER_VALUE_MAX = 2500
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"


def _stamp(fmt: str = "%Y%m%d-%H%M%S") -> str:
    return datetime.now(UTC).strftime(fmt)


def parse_key_values(value: Any, what: str) -> Any:
    """``["k=v", ...]``, ``"k=v,k2=v2"`` or a JSON object string -> dict (other values pass through)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{what}: not valid JSON ({exc})") from None
        value = [part for part in text.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        result: dict[str, str] = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"{what}: expected KEY=VALUE, got {item!r}")
            key, _, val = item.partition("=")
            if not key.strip():
                raise ValueError(f"{what}: empty key in {item!r}")
            result[key.strip()] = val.strip()
        return result
    return value


class CommandConfig(BaseModel):
    """Options every subcommand has."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    region: str | None = Field(
        None, description="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION or the profile's)"
    )
    profile: str | None = Field(None, description="AWS profile name (default: the default credential chain)")
    endpoint_url: str | None = Field(None, description="Send every AWS call here (tests, S3-compatible stores)")

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, data: Any) -> Any:
        """Comma-separated strings -> lists; ``KEY=VALUE`` items -> dicts (CLI and environment forms)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, info in cls.model_fields.items():
            if name not in data or data[name] is None:
                continue
            kind = field_kind(info.annotation)
            if kind == "list" and isinstance(data[name], str):
                data[name] = [part.strip() for part in data[name].split(",") if part.strip()]
            elif kind == "dict":
                data[name] = parse_key_values(data[name], "--" + name.replace("_", "-"))
        return data

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return None if value is None else check_region(value)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint_url(value)


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


class DownloadAbidConfig(CommandConfig):
    """download-abid: bins of the Amazon Bin Image Dataset into the ABID layout."""

    dest: Path = Field(..., description="Dataset folder to write (bin-images/, metadata/); created if missing")
    file_list: Path | None = Field(None, description="The course's file_list.json: {class: [metadata file or id, ...]}")
    ids: list[str] | None = Field(None, description="Bin ids (e.g. 00010 104573)")
    ids_file: Path | None = Field(None, description="File of bin ids, one per line or comma separated (# comments)")
    sample: int | None = Field(None, ge=1, le=1_000_000, description="Random sample of this many bins")
    max_count: int | None = Field(None, ge=0, description="Keep only bins with EXPECTED_QUANTITY <= this")
    seed: int = Field(0, ge=0, description="Seed of --sample (same seed, same bins)")
    bucket: str = Field(ABID_BUCKET, description="Source bucket")
    region: str | None = Field(ABID_REGION, description="Source bucket's region")
    unsigned: bool = Field(True, description="Anonymous requests (the ABID bucket is public)")
    workers: int = Field(16, ge=1, le=256, description="Parallel downloads")
    retries: int = Field(5, ge=0, le=20, description="Retries per file on throttling, 5xx and connection errors")
    list_limit: int = Field(1_000_000, ge=1, description="--sample: list at most this many metadata keys")
    metadata_read_limit: int | None = Field(
        None, ge=1, description="--sample: read at most this many metadata files (default 5 x sample + 100)"
    )
    refresh_listing: bool = Field(False, description="--sample: list the bucket again instead of the cached listing")

    @field_validator("ids")
    @classmethod
    def _ids(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [check_abid_id(v.strip()) for v in value]

    @model_validator(mode="after")
    def _one_selection(self) -> DownloadAbidConfig:
        chosen = [
            name
            for name, given in (
                ("--file-list", self.file_list),
                ("--ids", self.ids),
                ("--ids-file", self.ids_file),
                ("--sample", self.sample),
            )
            if given is not None
        ]
        if len(chosen) != 1:
            raise ValueError(
                "choose the bins with exactly one of --file-list, --ids, --ids-file or --sample "
                f"(got {', '.join(chosen) if chosen else 'none'})"
            )
        for name, path in (("--file-list", self.file_list), ("--ids-file", self.ids_file)):
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} does not exist or is not a file")
        if self.dest.exists() and not self.dest.is_dir():
            raise ValueError(f"--dest {self.dest} exists and is not a folder")
        return self


class UploadDatasetConfig(CommandConfig):
    """upload-dataset: a dataset folder -> S3 training channels."""

    source: Path = Field(
        ...,
        description="Dataset folder: with train/ (validation/, test/) subfolders, or one "
        "dataset that becomes the train channel",
    )
    s3_uri: str = Field(..., description="Destination prefix; channels go to <prefix>/train/, <prefix>/validation/")
    channel: dict[str, Path] | None = Field(
        None,
        description="Explicit channel=folder pairs instead of guessing from --source",
        json_schema_extra={"metavar": "NAME=DIR"},
    )
    workers: int = Field(8, ge=1, le=128, description="Parallel uploads")
    dry_run: bool = Field(False, description="Only say what would be uploaded")

    _s3 = field_validator("s3_uri")(classmethod(lambda cls, v: check_s3_uri(v)))

    @model_validator(mode="after")
    def _source(self) -> UploadDatasetConfig:
        if not self.source.is_dir():
            raise ValueError(f"--source {self.source} is not a folder")
        for name, path in (self.channel or {}).items():
            check_sagemaker_name(name, "channel name")
            if not (path if path.is_absolute() else self.source / path).is_dir():
                raise ValueError(f"--channel {name}={path}: not a folder (relative paths are under --source)")
        return self


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


class PushImagesConfig(CommandConfig):
    """push-images: the serving and training images -> ECR."""

    serving_image: str = Field("binsight-serve:latest", description="Local serving image")
    training_image: str = Field("binsight-train:latest", description="Local training image")
    serving_repository: str = Field("binsight-serve", description="ECR repository of the serving image")
    training_repository: str = Field("binsight-train", description="ECR repository of the training image")
    tag: str = Field("latest", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", description="Tag pushed")
    images: list[Literal["serving", "training"]] = Field(["serving", "training"], description="Which images")
    docker: str = Field("docker", description="Docker command")

    @field_validator("serving_repository", "training_repository")
    @classmethod
    def _repo(cls, value: str) -> str:
        import re

        if not re.match(r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*$", value) or len(value) > 256:
            raise ValueError(f"{value!r} is not an ECR repository name (lowercase letters, digits, . _ - /)")
        return value


# ------------------------------------------------------------------------------------------------
# Training and tuning
# ------------------------------------------------------------------------------------------------


class JobConfig(CommandConfig):
    """What a training job and the training jobs of a tuning job share."""

    image_uri: str = Field(..., description="Training image in ECR (push-images prints it)")
    role_arn: str = Field(..., description="IAM role SageMaker assumes (arn:aws:iam::<account>:role/<name>)")
    train_uri: str = Field(..., description="S3 prefix of the train channel")
    validation_uri: str | None = Field(None, description="S3 prefix of the validation channel")
    test_uri: str | None = Field(None, description="S3 prefix of the test channel")
    output_uri: str = Field(..., description="S3 prefix for model.tar.gz and output.tar.gz")
    instance_type: str = Field("ml.g4dn.xlarge", description="Training instance type")
    instance_count: int = Field(1, ge=1, le=100, description="Instances (more than one: multi-host training)")
    volume_size_gb: int = Field(30, ge=1, le=16384, description="EBS volume per instance (data is copied there)")
    max_runtime_s: int = Field(4 * 3600, ge=60, le=MAX_RUNTIME_LIMIT_S, description="Stop the job after this")
    spot: bool = Field(False, description="Managed spot training (cheaper; may be interrupted and resumed)")
    checkpoint_uri: str | None = Field(None, description="S3 prefix synced with /opt/ml/checkpoints (spot resume)")
    max_wait_s: int | None = Field(
        None,
        ge=60,
        le=MAX_RUNTIME_LIMIT_S,
        description="Spot: give up after this much time waiting + running (default 2 x max runtime, at least it)",
    )
    hyperparameters: dict[str, str] = Field(
        default_factory=dict,
        description="Hyperparameter KEY=VALUE (see train --help); repeatable",
        json_schema_extra={"flags": ["--hp", "--hyperparameter"], "metavar": "KEY=VALUE"},
    )
    hyperparameters_file: Path | None = Field(None, description="JSON object of hyperparameters (--hp wins)")
    allow_unknown_instance_type: bool = Field(False, description="Accept an instance family this tool does not know")
    wait: bool = Field(True, description="Wait for the job and report on it")
    poll_s: float = Field(30.0, gt=0, le=3600, description="Seconds between status checks while waiting")

    _role = field_validator("role_arn")(classmethod(lambda cls, v: check_role_arn(v)))
    _image = field_validator("image_uri")(classmethod(lambda cls, v: check_image_uri(v)))

    @field_validator("train_uri", "validation_uri", "test_uri", "output_uri", "checkpoint_uri")
    @classmethod
    def _uris(cls, value: str | None) -> str | None:
        return None if value is None else check_s3_uri(value)

    @field_validator("hyperparameters", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): (json.dumps(v) if isinstance(v, bool) else str(v)) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        check_instance_type(self.instance_type, self.allow_unknown_instance_type)
        if self.hyperparameters_file is not None:
            if not self.hyperparameters_file.is_file():
                raise ValueError(f"--hyperparameters-file {self.hyperparameters_file} does not exist")
            try:
                loaded = json.loads(self.hyperparameters_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(
                    f"--hyperparameters-file {self.hyperparameters_file}: not readable JSON ({exc})"
                ) from None
            if not isinstance(loaded, dict):
                raise ValueError(f"--hyperparameters-file {self.hyperparameters_file} must hold a JSON object")
            merged = self._stringify(loaded)
            merged.update(self.hyperparameters)
            object.__setattr__(self, "hyperparameters", merged)
        for key, value in self.hyperparameters.items():
            if len(key) > 256 or len(value) > HYPERPARAMETER_VALUE_MAX:
                raise ValueError(f"hyperparameter {key!r} is too long (keys <= 256, values <= 2500 characters)")
        if len(self.hyperparameters) > 100:
            raise ValueError("SageMaker accepts at most 100 hyperparameters")
        if self.spot:
            if self.max_wait_s is None:
                object.__setattr__(self, "max_wait_s", min(MAX_RUNTIME_LIMIT_S, 2 * self.max_runtime_s))
            if self.max_wait_s < self.max_runtime_s:
                raise ValueError(
                    f"--max-wait-s ({self.max_wait_s}) must be at least --max-runtime-s "
                    f"({self.max_runtime_s}): it counts the time waiting for spot capacity plus the "
                    "time running"
                )
        elif self.max_wait_s is not None:
            raise ValueError("--max-wait-s applies to spot training only; add --spot or drop it")
        channels = [u for u in (self.train_uri, self.validation_uri, self.test_uri) if u]
        if len(set(channels)) != len(channels):
            raise ValueError("the train, validation and test channels must be different S3 prefixes")
        return self

    def channels(self) -> dict[str, str]:
        """Channel name -> S3 prefix, as the training container reads them."""
        pairs = {"train": self.train_uri, "validation": self.validation_uri, "test": self.test_uri}
        return {name: uri for name, uri in pairs.items() if uri}


class TrainingJobConfig(JobConfig):
    """train: one SageMaker training job with the training image."""

    job_name: str = Field(default_factory=lambda: f"binsight-train-{_stamp()}", description="Training job name")
    stream_logs: bool = Field(True, description="While waiting, print the job's CloudWatch log lines")
    tensorboard_uri: str | None = Field(
        None, description="S3 prefix the job's TensorBoard scalars (/opt/ml/output/tensorboard) are synced to"
    )

    _name = field_validator("job_name")(classmethod(lambda cls, v: check_sagemaker_name(v, "training job name")))
    _tensorboard = field_validator("tensorboard_uri")(
        classmethod(lambda cls, v: None if v is None else check_s3_uri(v))
    )

    @model_validator(mode="after")
    def _spot_checkpoint(self) -> TrainingJobConfig:
        if self.spot and not self.checkpoint_uri:
            raise ValueError(
                "--spot needs --checkpoint-uri: an interrupted spot job resumes from the checkpoints "
                "synced there (without them it starts over)"
            )
        return self


class TuningJobConfig(JobConfig):
    """tune: a hyperparameter tuning job over lr, batch size, epochs and architecture, maximising val_acc."""

    tuning_job_name: str = Field(
        default_factory=lambda: f"binsight-{_stamp('%y%m%d-%H%M%S')}",
        description="Tuning job name (at most 32 characters)",
    )
    lr_range: str | None = Field("1e-5:1e-2", description="Learning rate MIN:MAX, searched on a log scale")
    batch_sizes: list[int] | None = Field(None, description="Batch sizes to try (categorical), e.g. 16,32,64")
    batch_size_range: str | None = Field(None, description="Batch size MIN:MAX (integer), instead of --batch-sizes")
    epochs_range: str | None = Field(None, description="Epochs MIN:MAX (integer), e.g. 5:20")
    architectures: list[str] | None = Field(None, description="Architectures to try (categorical)")
    max_jobs: int = Field(8, ge=1, le=750, description="Training jobs in all")
    max_parallel_jobs: int = Field(2, ge=1, le=100, description="Training jobs at once")
    strategy: Literal["Bayesian", "Random", "Hyperband", "Grid"] = Field("Bayesian", description="Search strategy")
    early_stopping: Literal["Off", "Auto"] = Field("Off", description="Stop unpromising training jobs early")

    _name = field_validator("tuning_job_name")(
        classmethod(lambda cls, v: check_sagemaker_name(v, "tuning job name", TUNING_JOB_NAME_MAX))
    )

    @staticmethod
    def split_range(text: str, option: str, kind: type) -> tuple[Any, Any]:
        low, sep, high = text.partition(":")
        try:
            if not sep:
                raise ValueError
            lo, hi = kind(low), kind(high)
        except ValueError:
            raise ValueError(f"{option} {text!r}: expected MIN:MAX ({kind.__name__} values)") from None
        if not lo < hi:
            raise ValueError(f"{option} {text!r}: MIN must be below MAX")
        return lo, hi

    @model_validator(mode="after")
    def _ranges(self) -> TuningJobConfig:
        if self.lr_range:
            lo, _ = self.split_range(self.lr_range, "--lr-range", float)
            if lo <= 0:
                raise ValueError("--lr-range: a logarithmic range needs MIN > 0")
        if self.batch_sizes and self.batch_size_range:
            raise ValueError("give --batch-sizes or --batch-size-range, not both")
        if self.batch_sizes and any(b < 1 for b in self.batch_sizes):
            raise ValueError("--batch-sizes must be positive")
        if self.batch_size_range:
            lo, _ = self.split_range(self.batch_size_range, "--batch-size-range", int)
            if lo < 1:
                raise ValueError("--batch-size-range: MIN must be at least 1")
        if self.epochs_range:
            lo, _ = self.split_range(self.epochs_range, "--epochs-range", int)
            if lo < 1:
                raise ValueError("--epochs-range: MIN must be at least 1")
        tuned = self.tuned_names()
        if not tuned:
            raise ValueError(
                "nothing to tune: give at least one of --lr-range, --batch-sizes/--batch-size-range, "
                "--epochs-range, --architectures"
            )
        clash = sorted(set(tuned) & set(self.hyperparameters))
        if clash:
            raise ValueError(f"{', '.join(clash)} are tuned; drop them from the static --hp values")
        if self.max_parallel_jobs > self.max_jobs:
            raise ValueError("--max-parallel-jobs cannot exceed --max-jobs")
        if self.strategy == "Grid" and (self.lr_range or self.epochs_range or self.batch_size_range):
            raise ValueError(
                "the Grid strategy searches categorical values only: use --batch-sizes and "
                "--architectures, and --lr-range '' to turn off the default learning-rate range"
            )
        if self.strategy == "Hyperband" and self.early_stopping != "Off":
            raise ValueError("Hyperband stops jobs itself: use --early-stopping Off with it")
        return self

    def tuned_names(self) -> list[str]:
        names = []
        if self.lr_range:
            names.append("lr")
        if self.batch_sizes or self.batch_size_range:
            names.append("batch_size")
        if self.epochs_range:
            names.append("epochs")
        if self.architectures:
            names.append("architecture")
        return names


# ------------------------------------------------------------------------------------------------
# Model, endpoint, batch transform
# ------------------------------------------------------------------------------------------------


class PackageModelConfig(CommandConfig):
    """package-model: an artifact folder -> model.tar.gz (model.json + model.pth at the root)."""

    model_dir: Path = Field(..., description="Artifact folder (model.json + model.pth)")
    output: Path = Field(Path("model.tar.gz"), description="Where to write the archive")
    upload_uri: str | None = Field(None, description="Also upload it: an S3 key ending in .tar.gz, or a prefix")

    @field_validator("upload_uri")
    @classmethod
    def _upload(cls, value: str | None) -> str | None:
        return None if value is None else check_s3_uri(value)


class DeployConfig(ScalingOptions, ServerlessOptions, CommandConfig):
    """deploy: a SageMaker model + endpoint config + endpoint, real-time or --serverless (created, or updated)."""

    endpoint_name: str = Field("binsight", description="Endpoint name")
    image_uri: str = Field(..., description="Serving image in ECR (push-images prints it)")
    role_arn: str = Field(..., description="IAM role SageMaker assumes (arn:aws:iam::<account>:role/<name>)")
    model_data: str | None = Field(None, description="S3 URI of a model.tar.gz (e.g. a training job's output)")
    model_dir: Path | None = Field(None, description="Artifact folder: packaged and uploaded to --upload-uri")
    upload_uri: str | None = Field(None, description="With --model-dir: S3 prefix or key for model.tar.gz")
    training_job: str | None = Field(None, description="Deploy this training job's model.tar.gz")
    model_name: str | None = Field(None, description="SageMaker model name (default <endpoint>-<time>)")
    instance_type: str = Field("ml.m5.large", description="Hosting instance type")
    instance_count: int = Field(1, ge=1, le=100, description="Hosting instances")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Container environment KEY=VALUE; repeatable",
        json_schema_extra={"metavar": "KEY=VALUE"},
    )
    mode: Literal["auto", "create", "update"] = Field(
        "auto", description="create, update, or auto (update when the endpoint exists)"
    )
    allow_unknown_instance_type: bool = Field(False, description="Accept an instance family this tool does not know")
    wait: bool = Field(True, description="Wait until the endpoint is InService")
    poll_s: float = Field(30.0, gt=0, le=3600, description="Seconds between status checks while waiting")

    _role = field_validator("role_arn")(classmethod(lambda cls, v: check_role_arn(v)))
    _image = field_validator("image_uri")(classmethod(lambda cls, v: check_image_uri(v)))

    @field_validator("endpoint_name", "model_name", "training_job")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return None if value is None else check_sagemaker_name(value)

    @field_validator("model_data")
    @classmethod
    def _model_data(cls, value: str | None) -> str | None:
        if value is None:
            return None
        uri = parse_s3_uri(value, need_key=True)
        if not uri.key.endswith(".tar.gz"):
            raise ValueError(f"--model-data {value!r} must name a .tar.gz object (package-model makes one)")
        return uri.uri

    @field_validator("upload_uri")
    @classmethod
    def _upload(cls, value: str | None) -> str | None:
        return None if value is None else check_s3_uri(value)

    @model_validator(mode="after")
    def _one_model_source(self) -> DeployConfig:
        check_instance_type(self.instance_type, self.allow_unknown_instance_type)
        sources = [
            n
            for n, v in (
                ("--model-data", self.model_data),
                ("--model-dir", self.model_dir),
                ("--training-job", self.training_job),
            )
            if v is not None
        ]
        if len(sources) != 1:
            raise ValueError(
                "give the model with exactly one of --model-data, --model-dir, --training-job "
                f"(got {', '.join(sources) if sources else 'none'})"
            )
        if self.model_dir is not None and not self.upload_uri:
            raise ValueError("--model-dir needs --upload-uri (where model.tar.gz goes in S3)")
        if self.autoscaling:
            if not self.wait:
                raise ValueError("autoscaling is set once the endpoint is InService: drop --no-wait (or run autoscale)")
            plan = self.scaling_plan(self.instance_type, self.instance_count)  # may raise: no measured capacity
            if not plan.min_instances <= self.instance_count <= plan.max_instances:
                raise ValueError(
                    f"--instance-count {self.instance_count} is outside --min-instances {plan.min_instances} .. "
                    f"--max-instances {plan.max_instances}"
                )
        return self


class DeleteEndpointConfig(CommandConfig):
    """delete-endpoint: the endpoint, and (unless kept) its endpoint config and model."""

    endpoint_name: str = Field("binsight", description="Endpoint name")
    keep_config: bool = Field(False, description="Keep the endpoint config")
    keep_model: bool = Field(False, description="Keep the SageMaker model(s) the endpoint served")

    _name = field_validator("endpoint_name")(classmethod(lambda cls, v: check_sagemaker_name(v, "endpoint name")))


class AutoscaleConfig(ScalingOptions, CommandConfig):
    """autoscale: show, set (--max-instances) or --remove an endpoint's target-tracking autoscaling."""

    endpoint_name: str = Field("binsight", description="Endpoint name")
    remove: bool = Field(False, description="Remove the endpoint's autoscaling (its instance count stays)")

    _name = field_validator("endpoint_name")(classmethod(lambda cls, v: check_sagemaker_name(v, "endpoint name")))

    @model_validator(mode="after")
    def _set_or_remove(self) -> AutoscaleConfig:
        if self.remove and self.autoscaling:
            raise ValueError("give --max-instances (set autoscaling) or --remove, not both")
        return self


class InvokeConfig(CommandConfig):
    """invoke: send photos to an endpoint and print the counts."""

    endpoint_name: str = Field("binsight", description="Endpoint name")
    images: list[Path] = Field(..., description="Photo files (JPEG or PNG), one request each")
    content_type: str | None = Field(None, description="Request Content-Type (default from the file suffix)")

    _name = field_validator("endpoint_name")(classmethod(lambda cls, v: check_sagemaker_name(v, "endpoint name")))

    @field_validator("images")
    @classmethod
    def _exist(cls, value: list[Path]) -> list[Path]:
        if not value:
            raise ValueError("give at least one photo")
        for path in value:
            if not path.is_file():
                raise ValueError(f"{path} does not exist or is not a file")
        return value


class BatchTransformConfig(CommandConfig):
    """batch-transform: count every photo under an S3 prefix with a SageMaker model, one image per request."""

    model_name: str = Field(..., description="SageMaker model (deploy prints its name)")
    input_uri: str = Field(..., description="S3 prefix of the photos")
    output_uri: str = Field(..., description="S3 prefix for the results (<photo>.out, JSON lines)")
    job_name: str = Field(default_factory=lambda: f"binsight-transform-{_stamp()}", description="Transform job name")
    instance_type: str = Field("ml.m5.large", description="Instance type")
    instance_count: int = Field(1, ge=1, le=100, description="Instances")
    max_concurrent_transforms: int = Field(
        0, ge=0, le=1000, description="Requests at once per instance (0: AWS default)"
    )
    max_payload_mb: int = Field(6, ge=1, le=100, description="Largest photo in MB")
    allow_unknown_instance_type: bool = Field(False, description="Accept an instance family this tool does not know")
    wait: bool = Field(True, description="Wait for the job")
    poll_s: float = Field(30.0, gt=0, le=3600, description="Seconds between status checks while waiting")

    @field_validator("model_name", "job_name")
    @classmethod
    def _names(cls, value: str) -> str:
        return check_sagemaker_name(value)

    @field_validator("input_uri", "output_uri")
    @classmethod
    def _uris(cls, value: str) -> str:
        return check_s3_uri(value)

    @model_validator(mode="after")
    def _instance(self) -> BatchTransformConfig:
        check_instance_type(self.instance_type, self.allow_unknown_instance_type)
        if parse_s3_uri(self.input_uri).as_prefix() == parse_s3_uri(self.output_uri).as_prefix():
            raise ValueError("--output-uri must differ from --input-uri")
        return self
