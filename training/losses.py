"""Loss for count classes: cross-entropy, optionally with an ordinal term.

Counts are ordered: predicting 4 for a bin of 5 is better than predicting 0. Plain
cross-entropy does not know that. ``ordinal_weight > 0`` adds the squared error between the
expected count under the predicted distribution (``softmax(logits) @ class_values``) and the true
count, which pushes probability mass towards neighbouring counts. The output stays a softmax
over classes, so the artifact contract (argmax = predicted class) does not change.

:func:`class_weights` gives the per-class weights of ``class_weighting=inverse``.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from service.ordinal_head import corn_log_probs


def expected_count_error(
    probs: torch.Tensor, values: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error of the expected count under ``probs`` (class-weighted when ``weights`` are given)."""
    error = (probs @ values - values[targets]) ** 2
    if weights is None:
        return error.mean()
    w = weights[targets]
    return (w * error).sum() / w.sum()


class CountLoss(nn.Module):
    def __init__(
        self,
        class_values: Sequence[float],
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        ordinal_weight: float = 0.0,
    ):
        super().__init__()
        if class_weights is not None and len(class_weights) != len(class_values):
            raise ValueError(f"{len(class_weights)} class weights for {len(class_values)} classes")
        self.register_buffer("values", torch.tensor([float(v) for v in class_values]))
        self.register_buffer("weights", None if class_weights is None else class_weights.float().clone())
        self.label_smoothing = float(label_smoothing)
        self.ordinal_weight = float(ordinal_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # AMP: the loss is computed in float32
        loss = F.cross_entropy(logits, targets, weight=self.weights, label_smoothing=self.label_smoothing)
        if self.ordinal_weight > 0:
            error = expected_count_error(logits.softmax(dim=-1), self.values, targets, self.weights)
            loss = loss + self.ordinal_weight * error
        return loss

    def extra_repr(self) -> str:
        return (
            f"classes={len(self.values)}, label_smoothing={self.label_smoothing}, "
            f"ordinal_weight={self.ordinal_weight}, weighted={self.weights is not None}"
        )


def class_weights(counts: Sequence[int], power: float = 1.0) -> torch.Tensor:
    """Inverse-frequency class weights ``(N / (K * n_c)) ** power``, normalised so sum(n_c * w_c) = N.

    With the normalisation the average loss keeps its scale. Classes absent from the data get
    weight 1 (they never occur as a target, so the value only matters for label smoothing).
    """
    n = torch.tensor([float(c) for c in counts])
    present = n > 0
    if not bool(present.any()):
        raise ValueError("class_weights needs at least one non-empty class")
    weights = torch.ones_like(n)
    weights[present] = (n[present].sum() / (int(present.sum()) * n[present])) ** power
    weights[present] *= n[present].sum() / (n[present] * weights[present]).sum()
    return weights


def corn_loss(conditional_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CORN's loss (:mod:`service.ordinal_head`): binary cross-entropy of each conditional question
    "is the count above k, given that it is above k-1?", asked only of the bins that reach it
    (count >= k), averaged over every question asked."""
    logits = conditional_logits.float()
    k = torch.arange(logits.shape[-1], device=logits.device)
    asked = targets[:, None] >= k  # (N, K-1): the bin reached question k
    above = (targets[:, None] > k).float()
    losses = F.binary_cross_entropy_with_logits(logits, above, reduction="none")
    return (losses * asked).sum() / asked.sum().clamp_min(1)


def corn_loss_from_log_probs(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """:func:`corn_loss` from the class log-probabilities a CORN head answers, exactly.

    With ``S_k = P(count >= k)``, question k's answers are ``log sigmoid(l_k) = log S_{k+1} - log S_k``
    (above k) and ``log sigmoid(-l_k) = log P(k) - log S_k`` (stops at k), so the loss needs only the
    model's output: the training loop, which sees nothing but the output, trains a CORN head with it.
    """
    lp = log_probs.float()
    survival = torch.logcumsumexp(lp.flip(-1), dim=-1).flip(-1)  # log P(count >= k), k = 0..K-1
    log_above = survival[:, 1:] - survival[:, :-1]
    log_stop = lp[:, :-1] - survival[:, :-1]
    k = torch.arange(lp.shape[-1] - 1, device=lp.device)
    asked = targets[:, None] >= k
    losses = -torch.where(targets[:, None] > k, log_above, log_stop)
    return (losses * asked).sum() / asked.sum().clamp_min(1)


class CornLoss(nn.Module):
    """:func:`corn_loss` plus, like :class:`CountLoss`, ``ordinal_weight`` times the squared error of the
    expected count under the head's class distribution. Label smoothing has no counterpart here.

    ``inputs`` is what the loss is given: the head's K-1 conditional logits (the CPU recipe, which
    calls :meth:`service.ordinal_head.CornHead.conditional`), or the K class log-probabilities the
    model answers (the training loop, :func:`corn_loss_from_log_probs`); both give the same loss.
    """

    def __init__(
        self,
        class_values: Sequence[float],
        ordinal_weight: float = 0.0,
        inputs: Literal["conditional_logits", "log_probs"] = "conditional_logits",
    ):
        super().__init__()
        if inputs not in ("conditional_logits", "log_probs"):
            raise ValueError(f"inputs must be conditional_logits or log_probs, not {inputs!r}")
        self.register_buffer("values", torch.tensor([float(v) for v in class_values]))
        self.ordinal_weight = float(ordinal_weight)
        self.inputs = inputs

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.inputs == "log_probs":
            loss = corn_loss_from_log_probs(outputs, targets)
            log_probs = outputs.float()
        else:
            loss = corn_loss(outputs, targets)
            log_probs = corn_log_probs(outputs.float())
        if self.ordinal_weight > 0:
            probs = log_probs.softmax(dim=-1)  # = exp(log_probs): they are normalised
            loss = loss + self.ordinal_weight * expected_count_error(probs, self.values, targets)
        return loss

    def extra_repr(self) -> str:
        return f"classes={len(self.values)}, ordinal_weight={self.ordinal_weight}, inputs={self.inputs}"
