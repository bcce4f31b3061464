"""Progress of long operations: a tqdm bar on a terminal, periodic ``key: value`` lines elsewhere.

Logs from CI, SageMaker notebooks' captured output or ``nohup`` have no terminal; a bar there is
noise, so :class:`Progress` prints a line like
``download_progress: done: 120 total: 400 percent: 30.0 rate_per_s: 8.1 eta_s: 35`` at most
every ``interval_s`` seconds, plus one at the end.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

Log = Callable[[str], None]


def print_line(line: str) -> None:
    print(line, flush=True)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Thread-safe counter with display. Use as a context manager; ``update`` from any thread."""

    def __init__(self, name: str, total: int | None = None, unit: str = "it", *, log: Log = print_line,
                 interval_s: float = 10.0, stream: TextIO | None = None, tty: bool | None = None,
                 unit_scale: bool = False) -> None:
        self.name, self.total, self.unit, self.log, self.interval_s = name, total, unit, log, interval_s
        self.done = 0
        self.fields: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last_line = self._started
        self._bar = None
        stream = stream or sys.stderr
        if tty if tty is not None else _is_tty(stream):
            try:
                from tqdm import tqdm
            except ImportError:  # the aws extra does not require tqdm; lines are the fallback
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=name, unit=unit, file=stream, unit_scale=unit_scale,
                                 dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_total(self, total: int) -> None:
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.refresh()

    def update(self, n: int = 1, **fields: Any) -> None:
        with self._lock:
            self.done += n
            self.fields.update(fields)
            if self._bar is not None:
                self._bar.update(n)
                if fields:
                    self._bar.set_postfix(self.fields, refresh=False)
                return
            now = time.monotonic()
            if now - self._last_line >= self.interval_s:
                self._last_line = now
                self.log(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        parts = [f"{self.name}_progress: done: {self.done}"]
        if self.total is not None:
            parts.append(f"total: {self.total}")
            if self.total:
                parts.append(f"percent: {100.0 * self.done / self.total:.1f}")
        rate = self.done / elapsed
        parts.append(f"rate_per_s: {rate:.2f}")
        if self.total is not None and rate > 0 and self.done < self.total:
            parts.append(f"eta_s: {(self.total - self.done) / rate:.0f}")
        parts.append(f"elapsed_s: {elapsed:.1f}")
        parts.extend(f"{k}: {v}" for k, v in self.fields.items())
        return " ".join(parts)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            elif self.log is not None:
                self.log(self.line())
                self.log = None  # type: ignore[assignment]  # close() twice prints once


class StatusWatcher:
    """Prints a line whenever a polled status changes, and a heartbeat every ``heartbeat_s``."""

    def __init__(self, name: str, log: Log = print_line, heartbeat_s: float = 60.0) -> None:
        self.name, self.log, self.heartbeat_s = name, log, heartbeat_s
        self.last: tuple | None = None
        self._started = time.monotonic()
        self._last_line = self._started

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def observe(self, **fields: Any) -> bool:
        """Log ``fields`` if they changed (or the heartbeat is due); ``True`` when they changed."""
        key = tuple(sorted((k, str(v)) for k, v in fields.items()))
        now = time.monotonic()
        changed = key != self.last
        if changed or now - self._last_line >= self.heartbeat_s:
            self.last, self._last_line = key, now
            text = " ".join(f"{k}: {v}" for k, v in fields.items() if v not in (None, ""))
            self.log(f"{self.name}: {text} elapsed_s: {self.elapsed():.0f}")
        return changed
