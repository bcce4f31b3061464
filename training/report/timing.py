"""Where each training step's time goes: waiting for data, the host-to-device copy, compute, the whole iteration.

The loop marks four points of a step (:meth:`StepTimer.waiting`, :meth:`arrived`, :meth:`placed`, :meth:`done`).
On the CPU the phases are wall-clock intervals between the marks. On a GPU the copy and compute are
asynchronous, so the timer records CUDA events at the marks and reads them in :meth:`flush`, with one
synchronisation, at the loop's log interval and at the end of the epoch: between those the timer costs two
clock reads and three event records per step and never waits for the device. Each step's loss sums (the
device tensor the step returns) are kept the same way and read in the same synchronisation.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class StepRecord:
    epoch: int
    step: int
    data_wait_s: float
    h2d_s: float
    compute_s: float
    step_s: float
    loss: float
    images: int

    def row(self) -> tuple[Any, ...]:
        return (
            self.epoch,
            self.step,
            f"{self.data_wait_s:.6f}",
            f"{self.h2d_s:.6f}",
            f"{self.compute_s:.6f}",
            f"{self.step_s:.6f}",
            f"{self.loss:.6g}",
            self.images,
        )


@dataclass
class Window:
    """The steps read by one :meth:`StepTimer.flush`."""

    records: list[StepRecord]
    seconds: float  # wall time of the window, synchronised at both ends

    def fields(self) -> dict[str, Any]:
        """The ``step_timing:`` line's figures (means per step in ms, data-wait share, img/s)."""
        n = len(self.records)
        if n == 0:
            return {}
        total = sum(r.step_s for r in self.records) or 1e-12
        return {
            "data_wait_ms": 1000 * sum(r.data_wait_s for r in self.records) / n,
            "h2d_ms": 1000 * sum(r.h2d_s for r in self.records) / n,
            "compute_ms": 1000 * sum(r.compute_s for r in self.records) / n,
            "step_ms": 1000 * total / n,
            "data_wait_share": sum(r.data_wait_s for r in self.records) / total,
            "window_img_per_s": sum(r.images for r in self.records) / max(self.seconds, 1e-9),
        }


@dataclass
class EpochTiming:
    """Totals of one epoch's steps (the ``epoch_timing:`` line and ``summary.csv``)."""

    epoch: int
    steps: int = 0
    images: int = 0
    data_wait_s: float = 0.0
    h2d_s: float = 0.0
    compute_s: float = 0.0
    step_s: float = 0.0
    train_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, window: Window) -> None:
        for r in window.records:
            self.steps += 1
            self.images += r.images
            self.data_wait_s += r.data_wait_s
            self.h2d_s += r.h2d_s
            self.compute_s += r.compute_s
            self.step_s += r.step_s

    def as_dict(self) -> dict[str, Any]:
        share = self.data_wait_s / self.step_s if self.step_s > 0 else None
        return {
            "epoch": self.epoch,
            "steps": self.steps,
            "images": self.images,
            "train_s": round(self.train_s, 3),
            "img_per_s": round(self.images / self.train_s, 3) if self.train_s > 0 else None,
            "data_wait_s": round(self.data_wait_s, 4),
            "h2d_s": round(self.h2d_s, 4),
            "compute_s": round(self.compute_s, 4),
            "step_s": round(self.step_s, 4),
            "data_wait_share": round(share, 4) if share is not None else None,
            **self.extra,
        }


class StepTimer:
    """Marks of the steps of one epoch at a time; :meth:`flush` turns the pending ones into :class:`StepRecord`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self._pending: list[tuple[int, int, float, float, float, float, Any, Any]] = []
        self._epoch = 0
        self._wait_start = self._arrived = self._placed = 0.0
        self._last_done: float | None = None
        self._events: tuple[Any, Any] | None = None
        self._window_start = time.perf_counter()
        self.epoch_timing = EpochTiming(0)
        self._epoch_started = self._window_start

    def _event(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start_epoch(self, epoch: int) -> None:
        self._sync()
        self._epoch = epoch
        self._pending.clear()
        self._last_done = None
        self.epoch_timing = EpochTiming(epoch)
        self._epoch_started = self._window_start = time.perf_counter()

    def waiting(self) -> None:
        """The loop is about to ask the loader for the next batch."""
        self._wait_start = time.perf_counter()
        if self._last_done is None:
            self._last_done = self._wait_start

    def arrived(self) -> None:
        self._arrived = time.perf_counter()
        if self.cuda:
            self._events = (self._event(), None)

    def placed(self) -> None:
        self._placed = time.perf_counter()
        if self.cuda and self._events is not None:
            self._events = (self._events[0], self._event())

    def done(self, step: int, sums: torch.Tensor | None) -> None:
        """Step ``step`` (1-based in the epoch) finished; ``sums`` is its ``[loss * n, correct, n]`` (or ``None``)."""
        now = time.perf_counter()
        end = self._event() if self.cuda else None
        started = self._last_done if self._last_done is not None else self._wait_start
        self._pending.append(
            (
                self._epoch,
                step,
                self._arrived - self._wait_start,
                self._placed - self._arrived,
                now - self._placed,
                now - started,
                (self._events, end) if self.cuda else None,
                sums,
            )
        )
        self._last_done = now

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def flush(self) -> Window:
        """Read the pending steps (one device synchronisation) into a :class:`Window` and the epoch's totals."""
        self._sync()
        now = time.perf_counter()
        pending, self._pending = self._pending, []
        sums = [p[7] for p in pending if p[7] is not None]
        values = torch.stack(sums).cpu().tolist() if sums else []
        records = []
        k = 0
        for epoch, step, wait, h2d, compute, whole, events, step_sums in pending:
            loss, images = float("nan"), 0
            if step_sums is not None:
                loss_n, _, n = values[k]
                k += 1
                loss, images = (loss_n / n if n else float("nan")), int(n)
            if events is not None:
                (start, placed), end = events
                if start is not None and placed is not None:
                    h2d = start.elapsed_time(placed) / 1000
                    compute = placed.elapsed_time(end) / 1000
            records.append(StepRecord(epoch, step, wait, h2d, compute, whole, loss, images))
        window = Window(records, now - self._window_start)
        self._window_start = now
        self.epoch_timing.add(window)
        self.epoch_timing.train_s = now - self._epoch_started
        return window


def peak_memory_mb(device: torch.device) -> float:
    """The device's peak allocated memory on a GPU; the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def device_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
