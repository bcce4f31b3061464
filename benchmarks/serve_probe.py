"""``serve`` with a memory probe inside: where its resident memory goes (soak_bench.py ``--probe`` runs this).

    .venv/bin/python benchmarks/serve_probe.py --out probe.jsonl [--tracemalloc] [-- serve options]

Runs ``service.__main__.main`` in this process, plus a daemon thread that writes one JSON line per
``--every`` seconds: VmRSS and RssAnon (/proc), glibc's ``mallinfo2()`` (``arena``: bytes of the
malloc heaps, ``uordblks``: of them in use, ``fordblks``: free but kept, ``hblkhd``: in mmapped
chunks), the number of malloc arenas (``malloc_info``), the thread count and, with ``--tracemalloc``,
the bytes Python objects hold (slow: only for telling a Python leak from allocator behaviour).
At exit it prints the tracemalloc lines that grew most since the first sample. Under jemalloc
(``LD_PRELOAD``) the glibc figures read zero; RSS still tells.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import sys
import threading
import time
import tracemalloc
from pathlib import Path


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def malloc_figures(libc) -> dict:
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # another allocator: glibc's figures mean nothing
        return {"arena": 0.0, "uordblks": 0.0, "fordblks": 0.0, "hblkhd": 0.0}
    info = libc.mallinfo2()
    out = {name: getattr(info, name) / 2**20 for name in ("arena", "uordblks", "fordblks", "hblkhd")}
    size = ctypes.c_size_t()
    buffer = ctypes.c_char_p()
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    if stream:
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        out["arenas"] = len(re.findall(rb'<heap nr="\d+"', ctypes.string_at(buffer, size.value)))
        libc.free(ctypes.cast(buffer, ctypes.c_void_p))
    return out


def proc_figures() -> dict:
    status = Path("/proc/self/status").read_text()
    found = dict(re.findall(r"^(VmRSS|RssAnon|Threads):\s+(\d+)", status, re.M))
    return {
        "rss_mb": int(found.get("VmRSS", 0)) / 1024,
        "anon_mb": int(found.get("RssAnon", 0)) / 1024,
        "threads": int(found.get("Threads", 0)),
    }


BASELINE: list[tracemalloc.Snapshot] = []  # the snapshot growth is measured from (a script, not the package)


def sample_forever(out: Path, every: float, baseline_after: float) -> None:
    libc = _libc()
    start = time.monotonic()
    with out.open("w") as handle:
        while True:
            row = {"t": round(time.monotonic() - start, 1), **proc_figures(), **malloc_figures(libc)}
            if tracemalloc.is_tracing():
                row["python_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
                if not BASELINE and row["t"] >= baseline_after:
                    BASELINE.append(tracemalloc.take_snapshot())
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            time.sleep(every)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--baseline-after", type=float, default=60.0, help="seconds: tracemalloc growth from here")
    args, serve_args = parser.parse_known_args()
    if args.tracemalloc:
        tracemalloc.start(8)
    sampler = threading.Thread(target=sample_forever, args=(args.out, args.every, args.baseline_after), daemon=True)
    sampler.start()
    from service.__main__ import main as serve

    try:
        return serve([a for a in serve_args if a != "--"])
    finally:
        if BASELINE:
            for stat in tracemalloc.take_snapshot().compare_to(BASELINE[0], "lineno")[:8]:
                print(f"tracemalloc_growth: {stat}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
