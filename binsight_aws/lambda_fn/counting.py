"""One photo -> the ``PhotoResult`` that ``POST /predict`` gives it, through an invoker.

The verdict is :mod:`service.manual_check`'s (the code ``/predict`` runs), with the thresholds resolved as
``serve`` resolves them: a configured value, else the model's recommendation in ``model.json``, else 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from binsight_aws.lambda_fn.invokers import Invoker, PhotoRejected
from binsight_aws.lambda_fn.settings import LambdaSettings
from service.manual_check import assess, thresholds, unreadable
from service.model_metadata import ModelMetadata
from service.schemas import PhotoResult, PredictionOut, PredictResponse


class _Answer(PredictionOut):
    """The model's answer in the shape :func:`service.manual_check.assess` reads (a ``Prediction``)."""

    def to_dict(self) -> dict:
        return self.model_dump()


@dataclass
class Counter:
    """Counts photos with ``invoker`` and judges them against an expected quantity."""

    invoker: Invoker
    settings: LambdaSettings

    @cached_property
    def metadata(self) -> ModelMetadata:
        return self.invoker.metadata()

    @cached_property
    def thresholds(self) -> tuple[float, float]:
        return thresholds(
            self.settings.manual_check_confidence,
            self.settings.manual_check_expected_probability,
            self.metadata.metrics,
        )

    def count(self, image: bytes, filename: str | None, expected_quantity: int | None) -> PhotoResult:
        """The photo's result; an unreadable or oversized photo gets an error result (``needs_manual_check``).

        :class:`~binsight_aws.lambda_fn.invokers.ModelUnavailable` propagates: a retry may succeed.
        """
        limit = self.settings.max_payload_bytes
        if len(image) > limit:
            return unreadable(
                filename,
                expected_quantity,
                f"photo is {len(image)} bytes, above the model's request limit of {limit} bytes "
                f"({self.settings.max_payload_mb:g} MiB)",
            )
        try:
            answer = self.invoker.predict(image)
        except PhotoRejected as exc:
            return unreadable(filename, expected_quantity, str(exc))
        min_confidence, min_expected = self.thresholds
        prediction = _Answer.model_validate(answer.model_dump())
        return assess(prediction, self.metadata.labels, filename, expected_quantity, min_confidence, min_expected)

    def response(self, results: list[PhotoResult]) -> PredictResponse:
        return PredictResponse(architecture=self.metadata.architecture, labels=self.metadata.labels, results=results)
