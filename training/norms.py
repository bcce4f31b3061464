"""BatchNorm running statistics that match the weights: recomputed on training bins before validation and saving.

A BatchNorm layer trains on each batch's own statistics and keeps an exponential average of them for
evaluation. With EfficientNet-Lite's momentum of 0.01 (TensorFlow's decay 0.99) that average spans
about a hundred steps: while fine-tuning moves the weights, the averaged statistics describe weights
of a hundred steps ago, and the network evaluated with them answers worse than its weights deserve
(measured in the recipe, :func:`training.recipes.top_training.recalibrate_norms`: validation 28%
with the trailing statistics, 42% recomputed, same weights). :func:`recalibrate` recomputes them as a
cumulative average over a fixed, seeded sample of un-augmented training bins, with the rest of the
network in eval mode (no dropout), as at evaluation. Frozen norms (kept in eval mode while training,
see :func:`training.optim.frozen_norms_to_eval`) are left as they are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from training.device import Placement
from training.labels import LabelledBin
from training.loaders import mix_seed

#: ``bn_recalibration=auto`` turns it on below this momentum (0.1 is PyTorch's default, 0.01 EfficientNet-Lite's).
SMALL_MOMENTUM = 0.05


def adapting_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers whose statistics move while training (not the fully frozen ones)."""
    norms = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            params = list(module.parameters(recurse=False))
            if not params or any(p.requires_grad for p in params):
                norms.append(module)
    return norms


def smallest_momentum(model: nn.Module) -> float | None:
    """The smallest momentum of :func:`adapting_norms` (``None`` without any; a cumulative norm counts as 0)."""
    momenta = [m.momentum if m.momentum is not None else 0.0 for m in adapting_norms(model)]
    return min(momenta) if momenta else None


def wanted(setting: str, model: nn.Module, norm_mode: str = "train") -> bool:
    """Whether ``bn_recalibration`` (``auto``, ``on``, ``off``) recalibrates ``model``; ``auto`` does not with
    ``norm_mode`` frozen, where the statistics the weights were trained with are the ones to serve."""
    if setting == "off" or (setting == "auto" and norm_mode == "frozen"):
        return False
    momentum = smallest_momentum(model)
    if momentum is None:
        return False
    return setting == "on" or momentum < SMALL_MOMENTUM


def sample_items(items: Sequence[LabelledBin], samples: int, seed: int) -> list[LabelledBin]:
    """The same seeded sample of training bins every epoch and on every worker."""
    rng = random.Random(mix_seed("bn_recalibration", seed))
    return rng.sample(list(items), min(samples, len(items)))


@dataclass(frozen=True)
class Recalibration:
    """How far the trailing statistics were from the recomputed ones (the model-health report shows it)."""

    layers: int
    batches: int
    #: max over layers of the mean |old mean - new mean| / new std
    max_mean_shift_sigma: float
    #: max over layers of the mean |log(old var / new var)|
    max_log_var_ratio: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "layers": self.layers,
            "batches": self.batches,
            "max_mean_shift_sigma": round(self.max_mean_shift_sigma, 4),
            "max_log_var_ratio": round(self.max_log_var_ratio, 4),
        }


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable, placement: Placement) -> Recalibration | None:
    """Recompute the running statistics of :func:`adapting_norms` on ``batches`` (``(images, targets, skipped)``);
    leaves ``model`` in eval mode. ``None`` when there is nothing to recompute or no batch of two or more."""
    norms = adapting_norms(model)
    if not norms:
        return None
    old = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    used = 0
    try:
        for images, targets, _ in batches:
            if targets.numel() < 2:
                continue
            images, targets = placement.place_batch(images, targets)
            with placement.autocast():
                model(images)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    if used == 0:
        for m, (mean, var, tracked) in zip(norms, old):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
        return None
    shifts, ratios = [], []
    for m, (mean, var, _) in zip(norms, old):
        std = (m.running_var + m.eps).sqrt()
        shifts.append(((mean - m.running_mean).abs() / std).mean())
        ratios.append(((var + m.eps) / (m.running_var + m.eps)).log().abs().mean())
    return Recalibration(len(norms), used, float(torch.stack(shifts).max()), float(torch.stack(ratios).max()))
