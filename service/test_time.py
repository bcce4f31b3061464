"""Test-time views: the model answers from the average of its probabilities over count-preserving views.

A bin holds as many items seen mirrored or turned as seen straight, so averaging the class
probabilities over such views of the photo removes part of the model's variance (the ABID literature
reports about a point of accuracy from it). Each view is one more forward pass, so the views are a
property of the model (``model.json``'s ``test_time_views``, chosen with the model's answer rule on
validation) and cost serving time in proportion to their number.

The transforms act on a batch ``[N, C, H, W]`` of square images; the training recipe uses the same
table for its augmented feature caches, so what a model trained on is what it is served with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

#: The dihedral transforms of a square image batch; each keeps the number of objects in the bin.
VIEW_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "orig": lambda x: x,
    "hflip": lambda x: x.flip(3),
    "vflip": lambda x: x.flip(2),
    "rot180": lambda x: x.flip(2, 3),
    "rot90": lambda x: x.transpose(2, 3).flip(3),
    "rot270": lambda x: x.transpose(2, 3).flip(2),
    "transpose": lambda x: x.transpose(2, 3),
    "antitranspose": lambda x: x.transpose(2, 3).flip(2, 3),
}
VIEWS: tuple[str, ...] = tuple(VIEW_TRANSFORMS)  # the names model.json accepts (TestTimeView), in this order


def view_probabilities(model: nn.Module, batch: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """Softmax probabilities ``[N, K]`` of ``model`` averaged over ``views`` of ``batch``.

    All views go through the model in one call (one batch of ``len(views) * N``), which keeps a
    runtime's per-call overhead the same as without views.
    """
    if tuple(views) == ("orig",):
        return torch.softmax(model(batch).float(), dim=1)
    stacked = torch.cat([VIEW_TRANSFORMS[v](batch) for v in views])
    probabilities = torch.softmax(model(stacked).float(), dim=1)
    return probabilities.view(len(views), len(batch), -1).mean(dim=0)
