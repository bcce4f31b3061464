"""``model.json``'s schema (:class:`ModelMetadata`), importable without torch.

:mod:`service.artifact` re-exports it; it lives here so that code which only reads or answers with
the metadata (``service.schemas``, the Lambda function of ``binsight_aws.lambda_fn``, which carries
no torch) does not import the model code.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from service.preprocess import PreprocessSpec

FORMAT_VERSION = 1

ResizePolicy = Literal["squash", "letterbox", "center_crop"]
#: Count-preserving views of a photo the model may average over at test time (:mod:`service.test_time`).
#: Classifier heads: a softmax over the classes, or the ordinal CORN head (:mod:`service.ordinal_head`).
Head = Literal["softmax", "corn"]
TestTimeView = Literal["orig", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "antitranspose"]


class ModelMetadata(BaseModel):
    """Contents of ``model.json``."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    format_version: int = Field(FORMAT_VERSION, description="Version of this schema; newer than the code's is refused.")
    architecture: str = Field(..., description="Name in the architecture registry.", examples=["efficientnet_lite0"])
    labels: list[str] = Field(
        ...,
        description="Class labels in output order: counts, optionally an overflow class.",
        examples=[["0", "1", "2", "3", "4", "5", "6+"]],
    )
    input_size: int = Field(224, ge=16, le=2048, description="Square input side in pixels.")
    resize: ResizePolicy = Field(
        "squash", description="How a photo becomes a square: squash, letterbox or center_crop."
    )
    mean: tuple[float, float, float] = Field(..., description="Per-channel mean on the 0..1 scale.")
    std: tuple[float, float, float] = Field(..., description="Per-channel standard deviation on the 0..1 scale.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Head dropout the module was built with.")
    head: Head = Field(
        "softmax",
        description="Classifier head: softmax over the classes, or corn (ordinal: K-1 conditional binary outputs, "
        "served as log class probabilities).",
    )
    output_stride: Literal[16, 32] = Field(
        32,
        description="Stride of the backbone's last feature maps: its own 32, or 16 (the last stride-2 block "
        "convolves at stride 1, so the last stages see maps twice as fine each way; EfficientNet-Lite only).",
    )
    test_time_views: list[TestTimeView] = Field(
        default_factory=lambda: ["orig"],
        description="Views of the photo whose class probabilities are averaged for the answer (mirror images, "
        "turns); each is one more forward pass. Chosen with the model, on validation.",
        examples=[["orig"], ["orig", "hflip"]],
    )
    metrics: dict[str, Any] = Field(default_factory=dict, description="Held-out metrics of this model.")
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    data: dict[str, Any] = Field(default_factory=dict, description="Provenance: dataset, split, counts, licence.")
    training: dict[str, Any] = Field(default_factory=dict, description="Recipe: hyperparameters, epochs, seed.")

    @field_validator("labels")
    @classmethod
    def _labels_are_counts(cls, labels: list[str]) -> list[str]:
        if len(labels) < 2:
            raise ValueError("at least two class labels are needed")
        if len(set(labels)) != len(labels):
            raise ValueError(f"class labels repeat: {labels}")
        for i, label in enumerate(labels):
            if label.endswith("+"):
                if i != len(labels) - 1 or not label[:-1].isdigit():
                    raise ValueError(f"overflow label {label!r} must be the last label and look like 'N+'")
            elif not label.isdigit():
                raise ValueError(f"label {label!r} is not a count (digits) nor an overflow class ('N+')")
        return labels

    @field_validator("test_time_views")
    @classmethod
    def _views_distinct(cls, views: list[str]) -> list[str]:
        if not views:
            raise ValueError("at least one test-time view is needed, e.g. ['orig']")
        if len(set(views)) != len(views):
            raise ValueError(f"test-time views repeat: {views}")
        return views

    @model_validator(mode="after")
    def _std_positive(self) -> "ModelMetadata":
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def class_values(self) -> list[float]:
        """Numeric count of each class; an overflow class 'N+' counts as N (a lower bound)."""
        return [float(label.rstrip("+")) for label in self.labels]

    @property
    def has_overflow_class(self) -> bool:
        return self.labels[-1].endswith("+")

    def preprocess_spec(self) -> PreprocessSpec:
        from service.preprocess import PreprocessSpec  # torch: only when a model is fed

        return PreprocessSpec(
            input_size=self.input_size, resize=self.resize, mean=tuple(self.mean), std=tuple(self.std)
        )
