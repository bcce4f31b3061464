"""A CORN head (Shi, Cao and Raschka 2021, "Deep neural networks for rank-consistent ordinal regression
based on conditional probabilities"): the ordinal alternative to a softmax over count classes.

For K ordered classes the head has K-1 outputs; output k is the logit of P(y > k | y > k-1), a
binary question learnt only on the bins that reach it (:func:`training.losses.corn_loss`).
Chaining them gives the unconditional P(y > k), which can only fall as k grows, so the answers
are rank-consistent by construction.

The served module outputs **log class probabilities** (plus the answer rule's offsets): a softmax
over them is the class distribution itself, so every caller that treats a model's output as
logits (the predictor, the ONNX graph, the test-time views, the manual-check flags) serves a CORN
model unchanged. ``model.json``'s ``head`` says which head a model has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def corn_log_probs(conditional_logits: torch.Tensor) -> torch.Tensor:
    """Log class probabilities from the K-1 conditional logits (exactly normalised, in log space).

    ``log P(y > k) = sum_{j <= k} log sigmoid(l_j)``; class k < K-1 is "reached k, stopped there":
    ``log P(y > k-1) + log sigmoid(-l_k)``; the last class is ``log P(y > K-2)``.
    """
    reach = F.logsigmoid(conditional_logits).cumsum(dim=-1)  # log P(y > k), k = 0..K-2
    before = torch.cat([torch.zeros_like(reach[..., :1]), reach[..., :-1]], dim=-1)  # log P(y > k-1)
    stop = before + F.logsigmoid(-conditional_logits)
    return torch.cat([stop, reach[..., -1:]], dim=-1)


class CornHead(nn.Module):
    """A linear layer to the K-1 conditional logits, answering log class probabilities + ``offsets``.

    ``offsets`` (a buffer, saved with the weights) is the answer rule of
    :mod:`training.recipes.decision`; it is zero until a rule is folded in.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a CORN head needs at least 2 classes, got {num_classes}")
        self.linear = nn.Linear(in_features, num_classes - 1)
        self.register_buffer("offsets", torch.zeros(num_classes))

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def num_classes(self) -> int:
        return self.linear.out_features + 1

    def conditional(self, x: torch.Tensor) -> torch.Tensor:
        """The K-1 conditional logits (what the training loss reads)."""
        return self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return corn_log_probs(self.linear(x)) + self.offsets

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the model's classifier (its last ``nn.Linear``) for a :class:`CornHead` of the same width."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier to replace")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if old.out_features != num_classes:
        raise ValueError(f"the last linear layer {last!r} has {old.out_features} outputs, not {num_classes}")
    setattr(parent, attr, CornHead(old.in_features, num_classes))
    return model
