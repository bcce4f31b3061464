"""Checkpoints for spot instances: atomic save every epoch (and on SIGTERM), resume on restart.

A checkpoint is one ``torch.save`` file holding plain data only (tensors, numbers, strings,
lists, dicts), so it loads with ``weights_only=True``: model, optimiser, scheduler and scaler
states, RNG states, progress (epoch, step within the epoch), the best model so far, the
history, and the config that made it. A run whose learning-relevant config differs from the
checkpoint's refuses to resume rather than silently mixing two recipes.

SageMaker sends SIGTERM and kills the container 120 s later. :class:`GracefulStop` turns the
signal into a flag the loop checks between steps; the loop then saves and exits.
"""

from __future__ import annotations

import random
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Iterator

import torch

from service.files import atomic_write
from training.config import TrainConfig

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used for this run; the message says why and what to do."""


@dataclass
class Progress:
    """Where a run stands. ``step_in_epoch`` > 0 means epoch ``epoch + 1`` was stopped part-way."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # optimiser steps done in the current, incomplete epoch
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)  # images that failed to load
    partial: dict[str, float] = field(default_factory=dict)  # running train sums of the stopped epoch

    def as_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "skipped_ids": self.skipped_ids,
            "partial": self.partial,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Progress":
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu")
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu(v) for v in state)
    return state


def save_checkpoint(
    path: Path,
    *,
    config: TrainConfig,
    data_fingerprint: str,
    world_size: int,
    progress: Progress,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    best_state: dict[str, torch.Tensor] | None,
) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config.model_dump(mode="json"),
        "recipe_hash": config.recipe_hash(),
        "data_fingerprint": data_fingerprint,
        "world_size": world_size,
        "progress": progress.as_dict(),
        "model": _cpu(model.state_dict()),
        "optimizer": _cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "best_state": best_state,
        "rng": capture_rng(),
    }
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(
    path: Path, config: TrainConfig, data_fingerprint: str, world_size: int = 1
) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if there is one and it belongs to this run; ``None`` when absent."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, refused globals, not a torch file
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "delete it to start the run over"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a binsight checkpoint of format {CHECKPOINT_FORMAT}; "
            "delete it or use another checkpoint directory"
        )
    if payload.get("recipe_hash") != config.recipe_hash():
        diff = config.recipe_diff(payload.get("config") or {})
        raise CheckpointError(
            f"checkpoint {path} was made with a different configuration ({'; '.join(diff) or 'unknown'}); "
            "resume with the same hyperparameters, or use another (empty) checkpoint directory to start over"
        )
    if payload.get("data_fingerprint") != data_fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was made on different data (the split's ids or labels differ); "
            "resume with the same data, or use another (empty) checkpoint directory to start over"
        )
    if payload.get("world_size") != world_size:
        raise CheckpointError(
            f"checkpoint {path} was made by {payload.get('world_size')} processes, this run has {world_size} "
            "(the batches of an epoch differ); resume with the same number of processes or start over "
            "in another checkpoint directory"
        )
    return payload


class GracefulStop:
    """Turns SIGTERM (and SIGINT) into a flag; ``request()`` sets it from code (tests, hooks).

    Install with ``with GracefulStop() as stop:``; the previous handlers come back on exit.
    A second SIGINT falls through to Python's KeyboardInterrupt, so a person can still force quit.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str = "requested") -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Give the signals back to their previous handlers (once nothing is left worth saving)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def iterate_until_stopped(iterable: Iterator[Any], stop: GracefulStop) -> Iterator[Any]:
    """Yield from ``iterable``; a DataLoader whose workers died of the same signal ends the loop quietly."""
    it = iter(iterable)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except RuntimeError:
            if stop.requested:
                return
            raise
        yield item
