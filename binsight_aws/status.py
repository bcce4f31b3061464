"""Waiting on SageMaker: one poller for training, tuning and transform jobs and endpoints, and the
watcher that prints a status line when the status changes (a heartbeat otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from training.log import Log, print_line


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


def job_ended(status: str) -> bool:
    """A training, tuning or transform job's status is final."""
    return status in ("Completed", "Failed", "Stopped")


def wait_for_status(
    describe: Callable[[], Mapping[str, Any]],
    status_field: str,
    done: Callable[[str], bool],
    *,
    name: str,
    poll_s: float,
    log: Log = print_line,
    details: Callable[[Mapping[str, Any]], Mapping[str, Any]] = lambda d: {},
    each: Callable[[Mapping[str, Any]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Mapping[str, Any]:
    """The one SageMaker poller: ``describe()`` every ``poll_s`` until ``done(description[status_field])``;
    returns the last description.

    Each poll logs ``<name>: status: ... <details(description)>`` when something changed (see
    :class:`StatusWatcher`) and then calls ``each(description)`` (log lines, progress).
    """
    watcher = StatusWatcher(name, log)
    while True:
        description = describe()
        status = description[status_field]
        watcher.observe(status=status, **details(description))
        if each is not None:
            each(description)
        if done(status):
            return description
        sleep(poll_s)
