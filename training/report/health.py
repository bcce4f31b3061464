"""Model health from ``param.grad`` and the weights, every N steps (and each of the first few).

The training step calls :meth:`HealthProbe.before_update` after the backward pass (gradients unscaled,
not yet clipped) and :meth:`after_update` after the optimiser step. Both read parameters only, never
module hooks, so the figures are the same under ``torch.compile`` and DistributedDataParallel (whose
gradients are already averaged by then). Each check costs one synchronisation; between checks nothing.

A check records: the loss, whether loss, gradients and weights are finite, the total gradient norm
(before clipping) and the smallest and largest per-tensor norm, the update/weight ratio
``||w_after - w_before|| / ||w_before||`` over the trainable weights, and per-channel mean and std of
the batch's input (after normalisation: a wrong mean/std shows there).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

FIRST_STEPS = 5


class HealthProbe:
    def __init__(self, params: Sequence[torch.Tensor], every: int, first: int = FIRST_STEPS):
        self.params = [p for p in params if p.requires_grad]
        self.every, self.first = max(1, every), first
        self.records: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None
        self._before: list[torch.Tensor] | None = None

    def due(self, global_step: int) -> bool:
        """Whether the step that becomes ``global_step`` (1-based) is checked."""
        return global_step <= self.first or global_step % self.every == 0

    @torch.no_grad()
    def before_update(self, global_step: int, epoch: int, loss: torch.Tensor, images: torch.Tensor) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norms = torch.stack(torch._foreach_norm(grads)).float() if grads else torch.zeros(1)
        weights = [p.detach() for p in self.params]
        weight_norms = torch.stack(torch._foreach_norm(weights)).float() if weights else torch.zeros(1)
        x = images.detach().float()
        dims = [d for d in range(x.ndim) if d != 1]
        self._pending = {
            "step": global_step,
            "epoch": epoch,
            "loss": loss.detach().float(),
            "grad_norm": grad_norms.norm(),
            "grad_norm_min": grad_norms.min(),
            "grad_norm_max": grad_norms.max(),
            "weight_norm": weight_norms.norm(),
            "input_mean": x.mean(dim=dims),
            "input_std": x.std(dim=dims),
            "grad_tensors": len(grads),
            "trainable_tensors": len(self.params),
        }
        self._before = [w.clone() for w in weights]

    @torch.no_grad()
    def after_update(self) -> dict[str, Any] | None:
        if self._pending is None or self._before is None:
            return None
        pending, before = self._pending, self._before
        self._pending = self._before = None
        after = [p.detach() for p in self.params]
        if after:
            deltas = torch._foreach_sub(after, before)
            update = torch.stack(torch._foreach_norm(deltas)).float().norm()
            finite = torch.stack([torch.isfinite(w).all() for w in after]).all()
        else:
            update, finite = torch.zeros(()), torch.ones((), dtype=torch.bool)
        grads = [p.grad for p in self.params if p.grad is not None]
        grads_finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else finite
        values = {
            k: (v.tolist() if isinstance(v, torch.Tensor) else v)
            for k, v in {
                **pending,
                "update_norm": update,
                "weights_finite": finite,
                "grads_finite": grads_finite,
            }.items()
        }
        weight_norm = values["weight_norm"]
        values["update_ratio"] = values["update_norm"] / weight_norm if weight_norm > 0 else None
        values["loss_finite"] = values["loss"] == values["loss"] and abs(values["loss"]) != float("inf")
        record = {k: _plain(v) for k, v in values.items()}
        self.records.append(record)
        return record


def _plain(value: Any) -> Any:
    """JSON-safe: non-finite floats as strings (``"nan"``, ``"inf"``), lists element by element."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, float):
        return round(value, 8) if abs(value) >= 1e-6 else value
    return value
