"""A model soup: the tops of several training seeds averaged weight by weight into one servable top.

Tops trained from different seeds err on different bins, and averaging their probabilities (an
ensemble) is usually more accurate than one of them, at N forward passes. Distilling the ensemble
into one student did not keep its gain here (README, "Training-seed noise and distillation"). The
tops start from the same ImageNet blocks and move little from them in a few epochs, so they stay
in one basin of the loss: measured on the recipe's validation bins, the mean of two CORN tops'
weights answers like the mean of their probabilities (46.8% vs 47.0% served, where averaging
weights of tops from unrelated starts would give noise), at one model's cost (Wortsman et al.,
"Model soups", 2022). On this recipe neither beat its best member, and three seeds' soup (45.8%)
trailed its members' mean (46.6%): the seeds disagree too little for averaging to pay (README).

The averaged weights give activations no member had, so the BatchNorm statistics of the soup are
recomputed on training features (:func:`training.recipes.top_training.recalibrate_norms`), as
after every epoch of training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from training.recipes.lite_parts import top_state, tuned_prefixes
from training.recipes.top_training import recalibrate_norms


def average_states(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The weight-by-weight mean of ``states`` (floating tensors); integer buffers (BatchNorm's batch
    counters) are taken from the first. The states must name the same tensors with the same shapes."""
    if not states:
        raise ValueError("a soup needs at least one state")
    names = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if set(state) != set(names):
            missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
            raise ValueError(f"state {i} differs from state 0: missing {missing[:3]}, extra {extra[:3]}")
    soup = {}
    for name in names:
        tensors = [state[name] for state in states]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(f"{name}: the states' shapes differ ({sorted(shapes)})")
        first = tensors[0]
        if first.is_floating_point():
            soup[name] = (sum(t.double() for t in tensors) / len(tensors)).to(first.dtype)
        else:
            soup[name] = first.clone()
    return soup


def load_soup(
    model: nn.Module,
    members: Sequence[nn.Module],
    features: torch.Tensor,
    train_index: Sequence[int],
    first_block: int,
    seed: int = 0,
) -> nn.Module:
    """Put the mean of ``members``' tops into ``model`` (in place, returned) and recompute its BatchNorm
    statistics on ``features[train_index]``; the frozen trunk of ``model`` is left as it is."""
    soup = average_states([top_state(m, first_block) for m in members])
    unexpected = model.load_state_dict(soup, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"the members' tops name tensors the model lacks: {unexpected[:3]}")
    recalibrate_norms(model, features, train_index, first_block, tuned_prefixes(model, first_block), seed=seed)
    return model
