"""The product's real use: does this bin hold what the inventory says?

For every held-out bin we ask ``/predict``'s question with the expected quantity right, off by
one and off by two or more, and count how often the manual-check flag fires (the same rule as
:func:`service.manual_check.assess`: confidence below ``min_confidence``, or the probability of
the expected quantity below ``min_expected_probability``, or an expected quantity the model cannot
represent). A good screen flags few bins whose quantity is right and most whose quantity is off.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from service.manual_check import expected_label

#: expected quantity = true count + offset; "off by 2+" uses +-2 and +-3.
CASES: dict[str, tuple[int, ...]] = {"right": (0,), "off_by_1": (-1, 1), "off_by_2_or_more": (-3, -2, 2, 3)}


def _expected_probabilities(
    probs: torch.Tensor, counts: Sequence[int], labels: Sequence[str], offsets: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (bin, offset) pair with a non-negative expected quantity: P(expected class), confidence."""
    index = {name: i for i, name in enumerate(labels)}
    p_expected, confidence = [], []
    top = probs.max(1).values
    for row, count in enumerate(counts):
        for offset in offsets:
            expected = count + offset
            if expected < 0:
                continue
            label = expected_label(list(labels), expected)
            p_expected.append(float(probs[row, index[label]]) if label is not None else 0.0)
            confidence.append(float(top[row]))
    return torch.tensor(p_expected), torch.tensor(confidence)


def flag_rates(
    probs: torch.Tensor,
    counts: Sequence[int],
    labels: Sequence[str],
    min_confidence: float,
    min_expected_probability: float,
) -> dict[str, dict[str, float]]:
    """How often the flag fires per case, with the number of questions asked."""
    out = {}
    for case, offsets in CASES.items():
        p, conf = _expected_probabilities(probs, counts, labels, offsets)
        flagged = (conf < min_confidence) | (p < min_expected_probability)
        out[case] = {"flag_rate": float(flagged.float().mean()) if len(p) else float("nan"), "n": len(p)}
    return out


def choose_thresholds(probs: torch.Tensor, counts: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """The thresholds maximising (flag rate off by one) - (flag rate right) on these (validation) bins.

    Off by one is the hard case (an item hidden or miscounted); off by two or more follows.
    """
    best: tuple[float, float, float] | None = None
    grid = [round(0.05 * i, 2) for i in range(0, 20)]
    for c in [0.0] + grid[1:12]:
        for p in grid:
            rates = flag_rates(probs, counts, labels, c, p)
            score = rates["off_by_1"]["flag_rate"] - rates["right"]["flag_rate"]
            if best is None or score > best[0] + 1e-9:
                best = (score, c, p)
    assert best is not None
    return {
        "min_confidence": best[1],
        "min_expected_probability": best[2],
        "youden_j": round(best[0], 4),
        "criterion": "max(flag rate off by one - flag rate right) on validation",
    }


def flag_curve(
    probs: torch.Tensor, counts: Sequence[int], labels: Sequence[str], min_confidence: float
) -> list[dict[str, float]]:
    """Flag rates per case as ``min_expected_probability`` sweeps 0..1 (``min_confidence`` fixed)."""
    rows = []
    for i in range(0, 101, 2):
        p = i / 100
        rates = flag_rates(probs, counts, labels, min_confidence, p)
        rows.append({"min_expected_probability": p, **{k: v["flag_rate"] for k, v in rates.items()}})
    return rows


def plot_flag_curve(
    curve: list[dict[str, float]], chosen: dict[str, Any], path: Path, rates: dict[str, dict[str, float]] | None = None
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    right = [r["right"] for r in curve]
    for case, style in (("off_by_1", "-"), ("off_by_2_or_more", "--")):
        ax.plot(right, [r[case] for r in curve], style, label=f"expected quantity {case.replace('_', ' ')}")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    if rates is not None:  # the measured point at the chosen thresholds (the curve's grid may not hold it)
        point = (rates["right"]["flag_rate"], rates["off_by_1"]["flag_rate"])
    else:
        at = min(curve, key=lambda r: abs(r["min_expected_probability"] - chosen["min_expected_probability"]))
        point = (at["right"], at["off_by_1"])
    ax.plot(
        [point[0]],
        [point[1]],
        "o",
        color="black",
        label=f"default (p < {chosen['min_expected_probability']:.2f}, conf < {chosen['min_confidence']:.2f})",
    )
    ax.set_xlabel("flagged, expected quantity right (false alarms)")
    ax.set_ylabel("flagged, expected quantity wrong (caught)")
    ax.set_title("Manual-check flag on held-out test bins")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
