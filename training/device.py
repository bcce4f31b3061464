"""Where a run computes: the device, the memory format and mixed precision, decided once.

:func:`resolve_device` turns an option (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a device;
:class:`Placement` moves a model and each batch there and opens the autocast context, so the
train step, validation and evaluation share one preamble.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this worker's GPU when CUDA is there, else the CPU; ``cuda`` -> GPU ``local_rank``
    (modulo the GPUs visible); ``cuda:N`` as given. Asking for CUDA where there is none is a ``ValueError``."""
    if name == "cpu":
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        try:
            explicit = torch.device(name)
        except RuntimeError:
            explicit = None
        if explicit is None or explicit.type != "cuda" or explicit.index is None:
            raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        if name == "auto":
            return torch.device("cpu")
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    if name in ("auto", "cuda"):
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device(name)


@dataclass(frozen=True)
class Placement:
    """The device, whether images are channels_last and whether autocast runs (both only on CUDA)."""

    device: torch.device
    channels_last: bool = False
    amp: bool = False
    amp_dtype: torch.dtype = torch.bfloat16

    @classmethod
    def on(cls, device: torch.device, *, channels_last: bool, amp: bool, amp_dtype: str) -> Placement:
        """What the options ask for, where ``device`` can do it (CPU: plain float32, default layout)."""
        cuda = device.type == "cuda"
        return cls(device, channels_last=cuda and channels_last, amp=cuda and amp, amp_dtype=getattr(torch, amp_dtype))

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def scales_gradients(self) -> bool:
        """float16 autocast needs a GradScaler; bfloat16 does not."""
        return self.amp and self.amp_dtype == torch.float16

    def place_model(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def place_batch(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)
