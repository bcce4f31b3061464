"""``SAGEMAKER_SAFE_PORT_RANGE``: the ports a serving container may use besides its bind port.

SageMaker sets it (``"XXXX-YYYY"``, inclusive) where several containers share a host, such as an
inference pipeline or a multi-container endpoint: a container that needs a second port (an admin or
metrics port, a sidecar) must take it from this range. binsight's server listens on
``SAGEMAKER_BIND_TO_PORT`` alone, uvicorn's workers included (they share that one socket), so it needs
none. The range is still read and checked (a malformed value is a configuration error like any other),
and ``serve`` logs it, with a warning when the bind port lies inside it.
"""

from __future__ import annotations

import re
from typing import Annotated, NamedTuple

from pydantic import BeforeValidator

_RANGE = re.compile(r"^\s*(\d{1,5})\s*-\s*(\d{1,5})\s*$")


class PortRange(NamedTuple):
    low: int
    high: int

    def __contains__(self, port: object) -> bool:  # type: ignore[override]
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


def parse_port_range(value: object) -> PortRange | None:
    """``"9000-9999"`` -> ``PortRange(9000, 9999)``; ``None``/empty -> ``None``; anything else a ValueError."""
    if value is None or isinstance(value, PortRange):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = f"{value[0]}-{value[1]}"
    text = str(value)
    if not text.strip():
        return None
    match = _RANGE.match(text)
    if not match:
        raise ValueError(f"expected LOW-HIGH, such as 9000-9999, got {text!r}")
    low, high = int(match.group(1)), int(match.group(2))
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"expected 1 <= LOW <= HIGH <= 65535, got {text!r}")
    return PortRange(low, high)


SafePortRange = Annotated[PortRange | None, BeforeValidator(parse_port_range)]
