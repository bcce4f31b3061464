"""Which C allocator ``serve`` runs on, and glibc's arena limit when it is glibc's malloc (issue 12).

glibc gives every thread that allocates an arena of its own (up to 8 per core) and keeps what is freed in
it for reuse; with a pool of threads decoding photos of every size, the arenas fill with free but kept
memory and the resident size creeps up while the memory in use stays flat (measured with
``benchmarks/soak_bench.py --probe malloc``). The serving image preloads jemalloc instead
(``Dockerfile.serve``), which hands freed memory back; elsewhere ``serve`` caps glibc at
:data:`ARENA_MAX` arenas before it starts any thread. ``MALLOC_ARENA_MAX`` set by hand wins.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

#: glibc's mallopt() parameter number for the arena limit (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
#: Arenas glibc may make when nothing else is configured.
ARENA_MAX = 2


def configure_allocator(environ: Mapping[str, str] | None = None) -> str:
    """Cap glibc's arenas unless another allocator is preloaded or the limit is set; says what runs."""
    environ = os.environ if environ is None else environ
    preloaded = environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preloaded:
            return f"{name} (LD_PRELOAD)"
    if platform.libc_ver()[0] != "glibc":
        return "libc malloc (not glibc: left as it is)"
    if environ.get("MALLOC_ARENA_MAX", "").strip():
        return f"glibc arena_max: {environ['MALLOC_ARENA_MAX'].strip()} (MALLOC_ARENA_MAX)"
    try:
        applied = ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, ARENA_MAX)
    except (OSError, AttributeError):
        applied = 0
    return f"glibc arena_max: {ARENA_MAX}" if applied else "glibc (mallopt refused the arena limit)"
