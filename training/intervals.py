"""How sure an accuracy figure is: intervals for one model, and a paired test between two.

On 1,166 test bins a 46.6% accuracy is 46.6% +- 2.9 points (95%), so two models a point apart
may not differ at all. Comparing them on the *same* bins is sharper than comparing two
intervals: most bins are right (or wrong) for both, and only the bins they disagree on carry
evidence. :func:`paired_comparison` reports the difference with a bootstrap interval over bins
and the exact McNemar test on the disagreeing bins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import torch


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``n`` trials (sound near 0% and 100%, unlike
    the normal approximation, and never outside [0, 1])."""
    if n <= 0:
        raise ValueError("an interval needs at least one trial")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be within 0..n; got {correct} of {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be within (0, 1); got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact ends where rounding would miss them
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def accuracy_interval(accuracy: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """:func:`wilson_interval` of a reported accuracy over ``n`` bins."""
    return wilson_interval(round(accuracy * n), n, confidence)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under "the models are equally good" each of the
    ``only_a + only_b`` disagreeing bins is equally likely to favour either model."""
    m = only_a + only_b
    if m == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedComparison:
    """Model B against model A on the same bins (``difference`` = B's accuracy - A's)."""

    n: int
    accuracy_a: float
    accuracy_b: float
    interval_a: tuple[float, float]  # each accuracy's Wilson interval
    interval_b: tuple[float, float]
    difference: float
    difference_low: float
    difference_high: float
    only_a_right: int
    only_b_right: int
    mcnemar_p: float
    confidence: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_comparison(
    right_a: torch.Tensor, right_b: torch.Tensor, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> PairedComparison:
    """Compare two models from their per-bin correctness (booleans, the same bins in the same order).

    The interval of the difference is the percentile bootstrap over bins (the bins resampled with
    replacement, both models kept together), seeded so a report reads the same on every run.
    """
    a, b = right_a.bool().flatten(), right_b.bool().flatten()
    if a.numel() != b.numel():
        raise ValueError(f"the two models answered {a.numel()} and {b.numel()} bins; compare the same bins")
    if a.numel() == 0:
        raise ValueError("no bins to compare")
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100; got {resamples}")
    n = a.numel()
    delta = b.double() - a.double()  # +1 where only B is right, -1 where only A is
    generator = torch.Generator().manual_seed(seed)
    draws = torch.empty(resamples, dtype=torch.float64)
    for start in range(0, resamples, 1000):  # in chunks: 1,000 x n indices at a time
        size = min(1000, resamples - start)
        rows = torch.randint(0, n, (size, n), generator=generator)
        draws[start : start + size] = delta[rows].mean(1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(draws, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return PairedComparison(
        n=n,
        accuracy_a=float(a.double().mean()),
        accuracy_b=float(b.double().mean()),
        interval_a=wilson_interval(int(a.sum()), n, confidence),
        interval_b=wilson_interval(int(b.sum()), n, confidence),
        difference=float(delta.mean()),
        difference_low=low,
        difference_high=high,
        only_a_right=only_a,
        only_b_right=only_b,
        mcnemar_p=mcnemar_exact_p(only_a, only_b),
        confidence=confidence,
    )
