"""The one log printer: ``key: value`` lines on stdout, flushed, read by people and by SageMaker's
metric regexes (the names are in :mod:`training.metric_names`), and the one progress display.

Every function that logs takes a ``log`` callable (default :func:`print_line`), so tests and tools
collect the lines instead. :class:`Progress` draws a tqdm bar on a terminal; without one (SageMaker,
CI, ``nohup``) a bar is noise, so it prints a line such as
``step_progress: done: 120 total: 400 percent: 30.0 rate_per_s: 8.1 eta_s: 35 elapsed_s: 14.8``
every ``every`` updates or ``interval_s`` seconds, plus one at the end. This module imports neither
torch nor boto3: the AWS client uses it too.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

Log = Callable[[str], None]


def print_line(line: str) -> None:
    print(line, flush=True)


def quiet(line: str) -> None:
    """A :data:`Log` that drops the line (workers other than rank 0)."""


def format_value(value: Any) -> str:
    """Floats with 4 decimals (or 4 significant digits in e-notation below 1e-3), the rest as ``str``."""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def fields_text(fields: Mapping[str, Any]) -> str:
    """``a: 1 b: 0.5000`` from ``{"a": 1, "b": 0.5}``; ``None`` values are left out."""
    return " ".join(f"{key}: {format_value(value)}" for key, value in fields.items() if value is not None)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Thread-safe counter with display. Use as a context manager; ``update`` from any thread.

    ``describe()`` adds fields to a line (or the bar's postfix) and is called only when one is
    shown, so it may be costly (the training loop reads the running loss off the GPU there).
    """

    def __init__(
        self,
        name: str,
        total: int | None = None,
        unit: str = "it",
        *,
        log: Log = print_line,
        interval_s: float | None = 10.0,
        every: int | None = None,
        initial: int = 0,
        describe: Callable[[], Mapping[str, Any]] | None = None,
        stream: TextIO | None = None,
        tty: bool | None = None,
        unit_scale: bool = False,
    ) -> None:
        self.name, self.total, self.unit, self.log = name, total, unit, log
        self.interval_s, self.every, self.describe = interval_s, every, describe
        self.done = self._initial = initial
        self.fields: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last_line = self._started
        self._bar = None
        stream = stream or sys.stderr
        if tty if tty is not None else is_terminal(stream):
            try:
                from tqdm import tqdm
            except ImportError:  # the aws extra does not require tqdm; lines are the fallback
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(
                    total=total,
                    initial=initial,
                    desc=name,
                    unit=unit,
                    file=stream,
                    unit_scale=unit_scale,
                    dynamic_ncols=True,
                )

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

    def _due(self, now: float) -> bool:
        by_time = self.interval_s is not None and now - self._last_line >= self.interval_s
        return by_time or bool(self.every and self.done % self.every == 0)

    def update(self, n: int = 1, **fields: Any) -> None:
        with self._lock:
            self.done += n
            self.fields.update(fields)
            now = time.monotonic()
            if self._bar is not None:
                self._bar.update(n)
                if fields or (self.describe is not None and self._due(now)):
                    self._last_line = now
                    self._bar.set_postfix(self._all_fields(), refresh=False)
                return
            if self._due(now):
                self._last_line = now
                self.log(self.line())

    def _all_fields(self) -> dict[str, Any]:
        return {**self.fields, **(self.describe() if self.describe is not None else {})}

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        parts = {"done": self.done}
        if self.total is not None:
            parts["total"] = self.total
            if self.total:
                parts["percent"] = f"{100.0 * self.done / self.total:.1f}"
        rate = (self.done - self._initial) / elapsed
        parts["rate_per_s"] = f"{rate:.2f}"
        if self.total is not None and rate > 0 and self.done < self.total:
            parts["eta_s"] = f"{(self.total - self.done) / rate:.0f}"
        parts["elapsed_s"] = f"{elapsed:.1f}"
        return f"{self.name}_progress: {fields_text({**parts, **self._all_fields()})}"

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            elif self.log is not None:
                self.log(self.line())
                self.log = None  # type: ignore[assignment]  # close() twice prints once
