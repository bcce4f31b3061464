"""Does a photo agree with the quantity the bin should hold, and should a person look at it?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from service.schemas import PhotoResult

if TYPE_CHECKING:  # torch-free at run time: the Lambda function (binsight_aws.lambda_fn) uses this module
    from service.predictor import Prediction

#: Thresholds used when neither the settings nor the model's metadata give one.
FALLBACK_THRESHOLD = 0.5


def thresholds(
    min_confidence: float | None, min_expected_probability: float | None, model_metrics: Mapping[str, Any]
) -> tuple[float, float]:
    """The thresholds in force: a configured value wins, then the model's recommendation, then 0.5.

    A model trained by ``training.recipes.default_model`` records in ``model.json``
    (``metrics.manual_check.thresholds``) the thresholds chosen on its validation split; they fit that
    model's calibration, which a fixed number cannot (0.5 flags most photos of a model that is right
    on 43% of bins).
    """
    recommended = (model_metrics.get("manual_check") or {}).get("thresholds") or {}

    def pick(configured: float | None, key: str) -> float:
        if configured is not None:
            return configured
        value = recommended.get(key)
        return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else FALLBACK_THRESHOLD

    return pick(min_confidence, "min_confidence"), pick(min_expected_probability, "min_expected_probability")


def expected_label(labels: list[str], expected_quantity: int) -> str | None:
    """The class label that stands for ``expected_quantity``; an overflow class 'N+' covers N and above."""
    if str(expected_quantity) in labels:
        return str(expected_quantity)
    last = labels[-1]
    if last.endswith("+") and expected_quantity >= int(last[:-1]):
        return last
    return None


def assess(
    prediction: Prediction,
    labels: list[str],
    filename: str | None,
    expected_quantity: int | None,
    min_confidence: float,
    min_expected_probability: float,
) -> PhotoResult:
    """A :class:`PhotoResult` with the expected-quantity fields and the manual-check flag filled in."""
    reasons: list[str] = []
    if prediction.confidence < min_confidence:
        reasons.append(f"confidence {prediction.confidence:.2f} is below {min_confidence:.2f}")
    probability_expected = matches = None
    if expected_quantity is not None:
        label = expected_label(labels, expected_quantity)
        probability_expected = prediction.probabilities[label] if label is not None else 0.0
        matches = prediction.label == label
        if label is None:
            reasons.append(
                f"expected quantity {expected_quantity} is beyond what the model can count "
                f"(labels {labels[0]}..{labels[-1]})"
            )
        elif probability_expected < min_expected_probability:
            reasons.append(
                f"probability of expected quantity {expected_quantity} is {probability_expected:.2f}, "
                f"below {min_expected_probability:.2f} (predicted {prediction.label})"
            )
    return PhotoResult(
        filename=filename,
        **prediction.to_dict(),
        expected_quantity=expected_quantity,
        probability_expected=probability_expected,
        matches_expected=matches,
        needs_manual_check=bool(reasons),
        manual_check_reasons=reasons,
    )


def unreadable(filename: str | None, expected_quantity: int | None, error: str) -> PhotoResult:
    """A photo that could not be decoded always needs a person."""
    return PhotoResult(
        filename=filename,
        expected_quantity=expected_quantity,
        error=error,
        needs_manual_check=True,
        manual_check_reasons=[f"photo could not be read: {error}"],
    )
