"""Training hyperparameters: one pydantic model, filled from hyperparameters.json, environment and CLI.

SageMaker writes every hyperparameter as a string (``"true"``, ``"0.001"``, ``"32"``), so the
model is built in pydantic's lax mode from strings and types them itself. Precedence, lowest
first: field defaults < ``hyperparameters.json`` < ``BINSIGHT_<FIELD>`` environment variables
< command-line options. An unknown key or a value of the wrong type is a :class:`ConfigError`
whose message names the key and where it came from.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.architectures import ArchitectureError, check_output_stride, get_architecture
from service.options import env_name, env_values, error_lines
from service.preprocess import ResizePolicy
from training.sagemaker_hyperparameters import is_platform_key

ENV_PREFIX = "BINSIGHT_"


#: Fields that do not change what is learned; a checkpoint made with other values of these resumes.
RUNTIME_FIELDS = frozenset(
    {
        "num_workers",
        "tta_flip",
        "eval_batch_size",
        "threads",
        "log_every_steps",
        # the training report (training.report) watches a run; it changes nothing that is learned
        "report",
        "report_health_every_steps",
        "report_sample_interval_s",
        "report_thresholds",
        "profile_steps",
        "profile_wait_steps",
        "profile_max_mb",
    }
)

_NONE_WORDS = {"", "none", "null", "auto"}


class ConfigError(ValueError):
    """A hyperparameter is unknown or invalid; the message names it and its source."""


class TrainConfig(BaseModel):
    """Every knob of a training run. Learning rates are per process; ``batch_size`` is per process."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)

    # Model
    architecture: str = Field("efficientnet_lite0", description="Name in service.architectures.")
    pretrained: bool = Field(True, description="Start from ImageNet weights (no download for efficientnet_lite0).")
    init_model_dir: str | None = Field(
        None,
        description="Start from this binsight artifact's weights (a model directory: model.json + model.pth) instead "
        "of ImageNet's: fine-tune the default model or an earlier run. It must be the same network (architecture, "
        "labels, head, output stride); on SageMaker, give it as an input channel and pass its path.",
    )
    input_size: int | None = Field(None, ge=16, le=2048, description="Square input side; default: the architecture's.")
    resize: ResizePolicy = Field("squash", description="squash, letterbox or center_crop (recorded in model.json).")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before the classifier.")
    freeze: Literal["none", "backbone", "all_but_last_stage"] = Field("none", description="Parameters kept fixed.")
    output_stride: Literal[16, 32] = Field(
        32,
        description="16: the last stride-2 block of an EfficientNet-Lite convolves at stride 1, so its last stages "
        "see maps twice as fine (about 2x the forward cost of Lite0; recorded in model.json); 32: the backbone's own.",
    )
    head: Literal["softmax", "corn"] = Field(
        "softmax",
        description="softmax: one logit per class; corn: the ordinal CORN head of the default model's recipe (K-1 "
        "questions 'more than k?', trained with CORN's loss; label_smoothing does not apply; recorded in model.json).",
    )
    # Labels
    max_count: int = Field(5, ge=1, le=1000, description="Classes are counts 0..max_count.")
    overflow: bool = Field(False, description="Bins above max_count become one 'N+' class instead of being dropped.")
    # Optimisation
    epochs: int = Field(15, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=65_536, description="Per process.")
    eval_batch_size: int | None = Field(None, ge=1, description="Validation/test batch; default 2 x batch_size.")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, le=10, description="Learning rate of the head.")
    backbone_lr_mult: float = Field(0.1, ge=0, le=10, description="Backbone learning rate = lr x this.")
    weight_decay: float = Field(0.01, ge=0, le=1, description="Not applied to biases and norm layers.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (Nesterov).")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="After warmup, per step.")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warmup from 1% of the learning rate.")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="Cosine ends at lr x this.")
    lr_cycles: int = Field(1, ge=1, le=100, description="Cosine cycles after warmup, each restarting at lr.")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    loss: Literal["ce", "ordinal"] = Field("ce", description="ordinal = CE + ordinal_weight x (E[count] - count)^2.")
    ordinal_weight: float = Field(0.1, ge=0, le=100)
    class_weighting: Literal["none", "inverse", "balanced_sampler"] = "none"
    class_weight_power: float = Field(0.5, ge=0, le=2, description="inverse weights are (N / (K n_c)) ** power.")
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm; 0 disables clipping.")
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on CPU).")
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    channels_last: bool = Field(True, description="channels_last memory format on CUDA.")
    select_metric: Literal["val_acc", "val_rmse", "val_loss"] = Field(
        "val_acc", description="Which validation figure picks the best epoch."
    )
    # Data
    augment_strength: float = Field(1.0, ge=0, le=2, description="0 = none, 1 = default, 2 = strong.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Ignored when a validation channel is given.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Ignored when a test channel is given.")
    max_bad_fraction: float = Field(0.01, ge=0, le=1, description="Unreadable images allowed before failing.")
    limit: int | None = Field(None, ge=1, description="Use at most this many bins (quick runs).")
    seed: int = Field(0, ge=0, lt=2**31, description="Draws the split (and limit's sample); also train_seed's default.")
    train_seed: int | None = Field(
        None,
        ge=0,
        lt=2**31,
        description="Seeds the training alone (the weights' start, the batch order, augmentation and dropout), so "
        "runs on the same split can differ in their draw; default: seed.",
    )
    # Runtime
    num_workers: int | None = Field(None, ge=0, le=64, description="DataLoader workers per process; default auto.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, le=512, description="CPU threads per process (torch); default torch's.")
    nproc_per_node: int | None = Field(None, ge=1, le=64, description="Processes per host; default: GPUs or 1.")
    tta_flip: bool = Field(False, description="Average with the horizontally flipped image at test time.")
    log_every_steps: int = Field(
        50,
        ge=0,
        description="Without a terminal, a step_progress line every this many "
        "steps (loss, lr, img/s, eta); 0: none. On a terminal: a progress bar.",
    )
    # BatchNorm statistics (training.norms)
    bn_recalibration: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Recompute BatchNorm running statistics on un-augmented training bins after each epoch, "
        "before validation and saving; auto: on when a norm's momentum is below 0.05 (EfficientNet-Lite's 0.01 "
        "leaves them ~100 steps behind the weights).",
    )
    norm_mode: Literal["train", "frozen"] = Field(
        "train",
        description="train: BatchNorm layers normalise by batch statistics while training (the usual); frozen: "
        "every BatchNorm stays in eval mode, normalising by its running statistics and keeping them (their scale "
        "and shift still learn), so the network trained is exactly the network served: for fine-tuning a trained "
        "model (init_model_dir) or small batches. With frozen, bn_recalibration auto does not recalibrate.",
    )
    bn_recalibration_samples: int = Field(512, ge=2, description="Training bins the statistics are recomputed on.")
    # The training report (training.report): step timing lines are printed whatever these say
    report: bool = Field(
        True,
        description="System sampler, model-health checks, rules and the HTML report + findings JSON "
        "in the output data dir, TensorBoard scalars beside it.",
    )
    report_health_every_steps: int = Field(
        50, ge=1, description="Gradient/weight checks every this many steps (and the first 5)."
    )
    report_sample_interval_s: float = Field(1.0, ge=0.1, le=60, description="System sampler period.")
    report_thresholds: str = Field(
        "", description="Rule thresholds to change, name=value,... (see training.report.thresholds)."
    )
    profile_steps: int = Field(0, ge=0, le=100, description="torch.profiler window of this many steps; 0: none.")
    profile_wait_steps: int = Field(10, ge=0, description="Steps trained before the profiler window opens.")
    profile_max_mb: float = Field(50.0, gt=0, description="Gzipped trace larger than this is not kept.")

    @field_validator(
        "input_size", "eval_batch_size", "limit", "num_workers", "nproc_per_node", "threads", mode="before"
    )
    @classmethod
    def _none_words(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
            return None
        return value

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        try:
            get_architecture(value)
        except ArchitectureError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("report_thresholds")
    @classmethod
    def _known_thresholds(cls, value: str) -> str:
        from training.report.thresholds import parse_thresholds  # pydantic only

        parse_thresholds(value)
        return value

    @field_validator("output_stride", mode="before")
    @classmethod
    def _stride_from_text(cls, value: object) -> object:
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value  # "16" from the env

    @model_validator(mode="after")
    def _output_stride_fits_the_architecture(self) -> "TrainConfig":
        check_output_stride(self.architecture, self.output_stride)
        return self

    @model_validator(mode="after")
    def _corn_head_takes_no_class_weights(self) -> "TrainConfig":
        if self.head == "corn" and self.class_weighting == "inverse":
            raise ValueError(
                "class_weighting inverse weights the softmax loss; with head corn use balanced_sampler or none"
            )
        return self

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "TrainConfig":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1 (got {self.val_fraction} + {self.test_fraction})"
            )
        return self

    # ----------------------------------------------------------------------------------------
    @property
    def effective_input_size(self) -> int:
        return self.input_size or get_architecture(self.architecture).input_size

    @property
    def effective_train_seed(self) -> int:
        return self.seed if self.train_seed is None else self.train_seed

    @property
    def effective_eval_batch_size(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size

    def recipe_hash(self) -> str:
        """Hash of everything that decides what is learned (not :data:`RUNTIME_FIELDS`)."""
        payload = {k: v for k, v in self.model_dump(mode="json").items() if k not in RUNTIME_FIELDS}
        if payload["output_stride"] == 32:
            del payload["output_stride"]  # checkpoints from before the field still resume
        if payload["head"] == "softmax":
            del payload["head"]  # likewise
        if payload["init_model_dir"] is None:
            del payload["init_model_dir"]  # likewise
        if payload["norm_mode"] == "train":
            del payload["norm_mode"]  # likewise
        if payload["train_seed"] is None:
            del payload["train_seed"]  # likewise
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def recipe_diff(self, other: Mapping[str, Any]) -> list[str]:
        """``key: ours vs theirs`` for every learning-relevant field that differs from ``other`` (a dump)."""
        ours = self.model_dump(mode="json")
        return [
            f"{k}: {other.get(k)!r} -> {ours[k]!r}"
            for k in sorted(ours)
            if k not in RUNTIME_FIELDS and ours[k] != other.get(k)
        ]


FIELD_NAMES = tuple(TrainConfig.model_fields)


def normalise_key(key: str) -> str:
    return key.strip().replace("-", "_").lower()


def _unknown_key_message(key: str, source: str) -> str:
    close = difflib.get_close_matches(normalise_key(key), FIELD_NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown hyperparameter {key!r} (from {source}){hint} Known: {', '.join(FIELD_NAMES)}"


def _unquote(value: Any) -> Any:
    """SageMaker's framework SDKs JSON-encode values (``'"adamw"'``); plain estimators do not."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def read_hyperparameters_file(path: str | os.PathLike) -> dict[str, Any]:
    """``hyperparameters.json`` as a dict (``{}`` when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object of hyperparameters, not {type(raw).__name__}")
    return raw


def env_hyperparameters(environ: Mapping[str, str]) -> dict[str, str]:
    """``BINSIGHT_<FIELD>`` variables naming a config field (other BINSIGHT_ variables are not ours).

    An empty variable counts as unset (compose passes ``BINSIGHT_X=`` for an unset ``${X}``).
    """
    return {env_name(ENV_PREFIX, name): value for name, value in env_values(TrainConfig, ENV_PREFIX, environ).items()}


def build_config(sources: list[tuple[str, Mapping[str, Any]]]) -> TrainConfig:
    """Merge ``(source name, {key: value})`` pairs, later ones winning, into a validated config.

    Keys SageMaker or its SDKs add (``sagemaker_*``, ``_tuning_objective_metric``: see
    :mod:`training.sagemaker_hyperparameters`) are skipped; anything else unknown fails.
    """
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, values in sources:
        for key, value in values.items():
            if not isinstance(key, str):
                raise ConfigError(f"hyperparameter names must be strings, got {key!r} (from {source})")
            if is_platform_key(key):
                continue
            name = normalise_key(key.removeprefix(ENV_PREFIX))
            if name not in TrainConfig.model_fields:
                raise ConfigError(_unknown_key_message(key, source))
            merged[name] = _unquote(value)
            origin[name] = f"{key!r} (from {source})"
    try:
        return TrainConfig(**merged)
    except ValidationError as exc:

        def where(name: str | None) -> str:
            return f"hyperparameter {origin.get(name, repr(name)) if name else '(combination)'}"

        raise ConfigError("; ".join(error_lines(exc, where, values=merged))) from None


def load_config(
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    hyperparameters_file: str | os.PathLike | None = None,
) -> TrainConfig:
    """The run's config from ``hyperparameters.json``, ``BINSIGHT_*`` environment and CLI values."""
    environ = os.environ if environ is None else environ
    sources: list[tuple[str, Mapping[str, Any]]] = []
    if hyperparameters_file is not None:
        sources.append((str(hyperparameters_file), read_hyperparameters_file(hyperparameters_file)))
    sources.append(("environment", env_hyperparameters(environ)))
    sources.append(("command line", dict(cli or {})))
    return build_config(sources)
