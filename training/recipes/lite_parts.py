"""EfficientNet-Lite (0/1/2) cut in two: a frozen trunk (stem + the first blocks) and a tuned top.

The recipe caches the trunk's output once per photo and trains only the top, so a CPU can fine-tune
the last stages. ``trunk_forward(model, x, k)`` followed by ``top_forward(model, ·, k)`` is exactly
``model(x)`` in eval mode (tested).
"""

from __future__ import annotations

import torch
from torch import nn


def num_blocks(model: nn.Module) -> int:
    return len(model._blocks)


def trunk_forward(model: nn.Module, x: torch.Tensor, stop_block: int) -> torch.Tensor:
    """Stem and blocks ``0..stop_block-1``."""
    x = model._swish(model._bn0(model._conv_stem(x)))
    for block in model._blocks[:stop_block]:
        x = block(x)
    return x


def blocks_forward(model: nn.Module, x: torch.Tensor, start: int, stop: int, drop_connect: float = 0.0) -> torch.Tensor:
    """Blocks ``start..stop-1``. ``drop_connect`` > 0 is EfficientNet's stochastic depth, scaled as its own
    forward scales it (block i skips its residual branch at ``drop_connect * i / blocks``); it acts only in
    training mode and only on the blocks with an identity shortcut."""
    total = num_blocks(model)
    for i, block in enumerate(model._blocks[start:stop], start):
        x = block(x, drop_connect_rate=drop_connect * i / total) if drop_connect else block(x)
    return x


def top_pooled(model: nn.Module, x: torch.Tensor, first_block: int, drop_connect: float = 0.0) -> torch.Tensor:
    """Blocks ``first_block..``, the head convolution and the pooling: the features the classifier reads."""
    x = blocks_forward(model, x, first_block, num_blocks(model), drop_connect)
    x = model._swish(model._bn1(model._conv_head(x)))
    return torch.flatten(model._avg_pooling(x), 1)


def classify(model: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """The classifier (dropout + the last linear layer) over :func:`top_pooled`'s features: logits."""
    return model._fc(model._dropout(pooled))


def top_forward(model: nn.Module, x: torch.Tensor, first_block: int) -> torch.Tensor:
    """Blocks ``first_block..`` and the head: logits."""
    return classify(model, top_pooled(model, x, first_block))


def tuned_prefixes(model: nn.Module, first_block: int) -> tuple[str, ...]:
    """Names (prefixes) of the parameters and buffers the top owns."""
    blocks = tuple(f"_blocks.{i}." for i in range(first_block, num_blocks(model)))
    return blocks + ("_conv_head.", "_bn1.", "_fc.")


def top_state(model: nn.Module, first_block: int) -> dict[str, torch.Tensor]:
    """A detached copy of the tensors of the top of ``model`` (:func:`tuned_prefixes`)."""
    prefixes = tuned_prefixes(model, first_block)
    return {n: t.detach().clone() for n, t in model.state_dict().items() if n.startswith(prefixes)}


class Trunk(nn.Module):
    """The frozen part as a module of its own (what the feature cache exports to ONNX)."""

    def __init__(self, model: nn.Module, stop_block: int) -> None:
        super().__init__()
        self.model = model
        self.stop_block = stop_block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return trunk_forward(self.model, x, self.stop_block)


class TopProbabilities(nn.Module):
    """The tuned part as a module of its own: trunk features in, class probabilities out (a teacher's answer)."""

    def __init__(self, model: nn.Module, first_block: int) -> None:
        super().__init__()
        self.model = model
        self.first_block = first_block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return top_forward(self.model, x, self.first_block).softmax(1)
