"""Predictor: one loaded artifact, warmed up, turning image bytes into count predictions.

The work is split in two steps so that a server can run them on different threads:

* :meth:`Predictor.prepare` (decode + resize, PIL only; releases the GIL) turns bytes into the
  model's input pixels,
* :meth:`Predictor.forward` stacks prepared images, normalises them and runs the model in
  chunks of ``max_batch_size`` under ``torch.inference_mode``.

Preparing yields raw RGB bytes rather than tensors on purpose: torch calls on many decode
threads would each start their own intra-op thread team and oversubscribe the CPU, so every
torch operation happens in :meth:`forward`, on one thread. The pixels are the same as
:func:`service.preprocess.preprocess_bytes` produces (tested), so serving matches evaluation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from service.artifact import ModelMetadata, load_artifact
from service.check_pictures import check_jpegs
from service.onnx_graph import CacheDir, resolve_cache_dir
from service.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, normalize, resize_image
from service.runtimes import (
    Precision,
    RuntimeChoice,
    RuntimeInfo,
    RuntimeUnavailable,
    available_cpus,
    onnxruntime_module,
)
from service.test_time import view_probabilities

logger = logging.getLogger(__name__)


class WarmUpError(RuntimeError):
    """The model loaded but a dummy inference failed or produced nonsense."""


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one photo."""

    count: int
    label: str
    confidence: float
    probabilities: dict[str, float]
    expected_count: float

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "expected_count": self.expected_count,
        }


@dataclass(frozen=True)
class ImageFailure:
    """One image of a request could not be read; ``error`` says why."""

    error: str

    def to_dict(self) -> dict:
        return {"error": self.error}


PredictionResult = Prediction | ImageFailure


@dataclass(frozen=True)
class PreparedImage:
    """An image decoded and resized to the model's input: ``size`` x ``size`` RGB, row-major bytes."""

    pixels: bytes
    size: int


@dataclass
class Predictor:
    """A model in eval mode plus what is needed to feed it and read its output.

    ``model`` is whatever runs the forward pass: the artifact's torch module, or an
    :class:`service.runtimes.OnnxRuntimeModule` once :meth:`from_artifact` switched to ONNX
    Runtime; ``runtime`` says which.
    """

    model: nn.Module
    metadata: ModelMetadata
    model_dir: Path | None = None
    max_batch_size: int = 16
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    runtime: RuntimeInfo = RuntimeInfo(name="torch")
    _class_values: list[float] = field(init=False, repr=False)
    _counts: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        self.model.eval()
        self._class_values = self.metadata.class_values
        self._counts = [int(v) for v in self._class_values]
        self._spec = self.metadata.preprocess_spec()

    @classmethod
    def from_artifact(
        cls,
        model_dir: str | Path,
        *,
        max_batch_size: int = 16,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        warm_up: bool = True,
        runtime: RuntimeChoice = "torch",
        precision: Precision = "fp32",
        cache_dir: Path | None = None,
        threads: int = 0,
        test_time_views: Sequence[str] | None = None,
    ) -> "Predictor":
        """Load an artifact (validated by :func:`load_artifact`), pick its runtime and, by default, warm it up.

        ``runtime``: ``torch``; ``onnxruntime`` (fp32 graph derived from model.pth, or with
        ``precision="int8"`` the artifact's int8 graph), which fails the load when ONNX Runtime
        cannot serve or disagrees with torch; ``auto``: ONNX Runtime when it can, else torch with
        the reason logged and reported (int8 is never a silent fallback: asking for it fails the
        load when it cannot be had). ``cache_dir`` holds exported graphs (default: see
        :func:`service.onnx_graph.resolve_cache_dir`); ``threads`` are ONNX Runtime's intra-op
        threads (0: one per available CPU). ``test_time_views`` replaces the model's own views
        (``model.json``'s ``test_time_views``), e.g. ``["orig"]`` for one forward pass per photo.
        """
        if precision == "int8" and runtime == "torch":
            raise ValueError("precision int8 runs on ONNX Runtime; use runtime auto or onnxruntime")
        start = time.perf_counter()
        artifact = load_artifact(model_dir)
        metadata = artifact.metadata
        if test_time_views is not None:  # validated like model.json's own field
            metadata = ModelMetadata.model_validate({**metadata.model_dump(), "test_time_views": list(test_time_views)})
        predictor = cls(
            artifact.model,
            metadata,
            model_dir=artifact.path,
            max_batch_size=max_batch_size,
            max_image_pixels=max_image_pixels,
            runtime=RuntimeInfo(name="torch", requested=runtime, threads=torch.get_num_threads()),
        )
        loaded = time.perf_counter()
        if runtime != "torch":
            # The runtime check runs torch on the check images too, so torch needs no warm-up of its own.
            predictor._use_onnxruntime(runtime, precision, resolve_cache_dir(cache_dir), threads or available_cpus())
        if warm_up:
            predictor.warm_up()
        logger.info(
            "model loaded: model_dir: %s architecture: %s classes: %d input_size: %d test_time_views: %s "
            "load_s: %.2f warmup_s: %.2f %s",
            artifact.path,
            metadata.architecture,
            metadata.num_classes,
            metadata.input_size,
            ",".join(metadata.test_time_views),
            loaded - start,
            time.perf_counter() - loaded,
            predictor.runtime.log_fields(),
        )
        return predictor

    def _use_onnxruntime(self, requested: RuntimeChoice, precision: Precision, cache: CacheDir, threads: int) -> None:
        """Switch the forward pass to ONNX Runtime, checked against the torch model on the check images."""
        if cache.path is None:
            logger.warning("onnx cache off: reason: %s", cache.note)
        try:
            module, info = onnxruntime_module(
                self.model,
                self.metadata,
                self.model_dir,
                self.check_batch(),
                precision=precision,
                cache=cache,
                threads=threads,
                requested=requested,
            )
        except RuntimeUnavailable as exc:
            if requested == "onnxruntime" or precision == "int8":
                raise
            logger.warning("onnxruntime not used, serving with torch: reason: %s", exc)
            self.runtime = RuntimeInfo(
                name="torch", requested=requested, threads=torch.get_num_threads(), fallback_reason=str(exc)
            )
            return
        self.model, self.runtime = module, info

    @property
    def input_size(self) -> int:
        return self._spec.input_size

    # ----------------------------------------------------------------------------- steps

    def prepare(self, data: bytes) -> PreparedImage:
        """Decode and resize one image; raises :class:`ImageDecodeError` with a message naming the problem."""
        image = decode_image(data, max_pixels=self.max_image_pixels)
        resized = resize_image(image, self._spec.input_size, self._spec.resize)
        if resized.mode != "RGB":  # decode_image already converts; guard against future changes
            resized = resized.convert("RGB")
        return PreparedImage(resized.tobytes(), self._spec.input_size)

    def batch_tensor(self, images: Sequence[PreparedImage]) -> torch.Tensor:
        """Prepared images -> normalised float batch [N, 3, S, S] (channels-last in memory)."""
        size = self._spec.input_size
        if any(image.size != size for image in images):
            raise ValueError(f"prepared images must be {size}x{size}")
        flat = torch.frombuffer(bytearray(b"".join(image.pixels for image in images)), dtype=torch.uint8)
        nchw = flat.view(len(images), size, size, 3).permute(0, 3, 1, 2)
        return normalize(nchw, self._spec)

    def forward(self, images: Sequence[PreparedImage]) -> list[Prediction]:
        """Run the model on prepared images, ``max_batch_size`` at a time, averaged over the model's views."""
        results: list[Prediction] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.max_batch_size):
                batch = self.batch_tensor(images[start : start + self.max_batch_size])
                probabilities = view_probabilities(self.model, batch, self.metadata.test_time_views)
                results.extend(self._predictions(probabilities))
        return results

    def _predictions(self, probabilities: torch.Tensor) -> list[Prediction]:
        labels = self.metadata.labels
        values = torch.tensor(self._class_values, dtype=probabilities.dtype)
        expected = (probabilities * values).sum(dim=1).tolist()
        confidence, index = probabilities.max(dim=1)
        rows = probabilities.tolist()
        out = []
        for row, conf, idx, exp in zip(rows, confidence.tolist(), index.tolist(), expected):
            out.append(
                Prediction(
                    count=self._counts[idx],
                    label=labels[idx],
                    confidence=round(conf, 6),
                    probabilities={label: round(p, 6) for label, p in zip(labels, row)},
                    expected_count=round(exp, 4),
                )
            )
        return out

    # ----------------------------------------------------------------------------- whole path

    def predict_bytes(self, images: Sequence[bytes]) -> list[PredictionResult]:
        """Bytes -> predictions, in order; an unreadable image gives an :class:`ImageFailure` in its place."""
        prepared: list[PreparedImage | ImageFailure] = []
        for data in images:
            try:
                prepared.append(self.prepare(data))
            except ImageDecodeError as exc:
                prepared.append(ImageFailure(str(exc)))
        good = [p for p in prepared if isinstance(p, PreparedImage)]
        predictions = iter(self.forward(good)) if good else iter(())
        return [p if isinstance(p, ImageFailure) else next(predictions) for p in prepared]

    def check_images(self) -> list[bytes]:
        """The JPEGs that warm up the model and check runtimes (:func:`service.check_pictures.check_jpegs`)."""
        return check_jpegs(self._spec.input_size)

    def check_batch(self) -> torch.Tensor:
        """The check images through the serving preprocessing: the batch runtimes are compared on."""
        return self.batch_tensor([self.prepare(data) for data in self.check_images()])

    def warm_up(self) -> None:
        """Run the check images through the whole path; raise :class:`WarmUpError` unless the output is sane.

        This is what lets ``/ping`` say healthy only when the model really answers.
        """
        try:
            results = self.predict_bytes(self.check_images())
        except Exception as exc:
            raise WarmUpError(f"warm-up inference failed: {type(exc).__name__}: {exc}") from exc
        for result in results:
            if isinstance(result, ImageFailure):
                raise WarmUpError(f"warm-up image could not be prepared: {result.error}")
            total = sum(result.probabilities.values())
            if not all(math.isfinite(p) for p in result.probabilities.values()) or abs(total - 1.0) > 1e-3:
                raise WarmUpError(f"warm-up inference gave invalid probabilities: {result.probabilities}")
