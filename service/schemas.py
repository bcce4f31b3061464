"""Response models of the HTTP API; their descriptions and examples are what ``/docs`` shows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.model_metadata import ModelMetadata  # not service.artifact: no torch import

_PROBABILITIES_EXAMPLE = {"0": 0.001, "1": 0.012, "2": 0.081, "3": 0.702, "4": 0.15, "5": 0.04, "6+": 0.014}


class PredictionOut(BaseModel):
    """The model's answer for one photo."""

    count: int = Field(
        ...,
        description="Most likely number of objects (the value of the most probable class; "
        "an overflow class 'N+' counts as N).",
        examples=[3],
    )
    label: str = Field(..., description="Most probable class label.", examples=["3"])
    confidence: float = Field(..., ge=0, le=1, description="Probability of that class.", examples=[0.702])
    probabilities: dict[str, float] = Field(
        ..., description="Probability of every class label.", examples=[_PROBABILITIES_EXAMPLE]
    )
    expected_count: float = Field(
        ..., description="Probability-weighted mean count (overflow class counts as N).", examples=[3.16]
    )


class ImageErrorOut(BaseModel):
    """One image of a batch that could not be read; the other images are still answered."""

    error: str = Field(..., examples=["image data is corrupt or truncated: image file is truncated"])


class InvocationResponse(BaseModel):
    """``/invocations`` answer with ``Accept: application/json``: one entry per image, in request order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "predictions": [
                        {
                            "count": 3,
                            "label": "3",
                            "confidence": 0.702,
                            "probabilities": _PROBABILITIES_EXAMPLE,
                            "expected_count": 3.16,
                        },
                        {"error": "image data is corrupt or truncated: image file is truncated"},
                    ]
                }
            ]
        }
    )

    predictions: list[PredictionOut | ImageErrorOut]


class ErrorResponse(BaseModel):
    """Every error answer: what went wrong, in words."""

    # No example here: one message would stand for every status in /docs (it showed the 415 one on 413 and
    # 503); each response documents its own real messages as named examples (service/error_docs.py).
    error: str = Field(..., description="What went wrong, and what to send instead.")


class PingResponse(BaseModel):
    """Health: ``ready`` (HTTP 200) only once the model is loaded and a warm-up inference succeeded."""

    status: Literal["ready", "loading", "failed", "draining"] = Field(..., examples=["ready"])
    detail: str | None = Field(
        None, description="Why the server is not ready (loading, load error, shutting down).", examples=[None]
    )


class RuntimeOut(BaseModel):
    """What runs the forward pass, and how it was chosen."""

    name: Literal["torch", "onnxruntime"] = Field(..., examples=["onnxruntime"])
    precision: Literal["fp32", "int8"] = Field("fp32", examples=["fp32"])
    requested: Literal["auto", "onnxruntime", "torch"] = Field(
        "torch", description="BINSIGHT_RUNTIME as set.", examples=["auto"]
    )
    threads: int = Field(0, description="Intra-op threads of the runtime.", examples=[2])
    graph: str | None = Field(None, description="The ONNX graph served (a cache file, or the artifact's int8 graph).")
    cache: str | None = Field(None, description="hit, miss (exported at load), off (no cache dir) or artifact.")
    export_s: float | None = Field(None, description="Seconds the ONNX export took at load (0 on a cache hit).")
    prepare_s: float | None = Field(None, description="Seconds from the torch model to a checked ONNX session.")
    parity_max_abs_diff: float | None = Field(
        None, description="Largest probability difference to torch on the check images.", examples=[5.7e-07]
    )
    parity_tolerance: float | None = Field(None, examples=[0.0001])
    fallback_reason: str | None = Field(None, description="Why ONNX Runtime was not used (auto only).")
    onnxruntime_version: str | None = Field(None, examples=["1.32.0"])


class ModelInfo(BaseModel):
    """The served artifact: where it came from, its model.json, and the runtime serving it."""

    model_dir: str | None = Field(None, examples=["/opt/ml/model"])
    metadata: ModelMetadata
    class_values: list[float] = Field(
        ..., description="Numeric count of each class label.", examples=[[0, 1, 2, 3, 4, 5, 6]]
    )
    max_batch_size: int = Field(..., description="Images per forward pass; bigger requests run in chunks.")
    runtime: RuntimeOut


class PhotoResult(BaseModel):
    """``/predict`` answer for one uploaded photo."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "filename": "bin-00017.jpg",
                    "count": 3,
                    "label": "3",
                    "confidence": 0.702,
                    "probabilities": _PROBABILITIES_EXAMPLE,
                    "expected_count": 3.16,
                    "expected_quantity": 3,
                    "probability_expected": 0.702,
                    "matches_expected": True,
                    "needs_manual_check": False,
                    "manual_check_reasons": [],
                    "error": None,
                }
            ]
        }
    )

    filename: str | None = Field(None, description="Name of the uploaded file.")
    count: int | None = Field(None, description="Most likely number of objects.")
    label: str | None = Field(None, description="Most probable class label.")
    confidence: float | None = Field(None, description="Probability of that class.")
    probabilities: dict[str, float] | None = Field(None, description="Probability of every class label.")
    expected_count: float | None = Field(None, description="Probability-weighted mean count.")
    expected_quantity: int | None = Field(None, description="The quantity the bin should hold, as sent.")
    probability_expected: float | None = Field(
        None,
        description="Probability that the bin holds exactly expected_quantity (for an overflow class "
        "'N+': that it holds N or more).",
    )
    matches_expected: bool | None = Field(None, description="Whether the predicted count is the expected quantity.")
    needs_manual_check: bool = Field(
        False,
        description="True when a person should look at this bin: low "
        "confidence, a low probability of the expected quantity, "
        "or an unreadable photo.",
    )
    manual_check_reasons: list[str] = Field(default_factory=list, description="Why a manual check is needed.")
    error: str | None = Field(None, description="Why the photo could not be read (then no prediction).")


class PredictResponse(BaseModel):
    """``/predict`` answer: one result per uploaded photo, in upload order."""

    architecture: str = Field(..., examples=["efficientnet_lite0"])
    labels: list[str] = Field(..., examples=[["0", "1", "2", "3", "4", "5", "6+"]])
    results: list[PhotoResult]
