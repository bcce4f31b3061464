"""The one log printer: ``key: value`` lines on stdout, flushed, which people and SageMaker's metric
regexes both read (see :mod:`training.metric_names`). Every function that logs takes a ``log``
callable (default :func:`print_line`), so tests and tools collect the lines instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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
