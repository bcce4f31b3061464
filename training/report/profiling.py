"""A bounded ``torch.profiler`` window on request: ``profile_steps`` steps after the first ``profile_wait_steps``
steps this process trains (the end of an epoch closes a window early), then no profiler for the rest of the run.

The trace is written gzipped (``report/profile/trace.json.gz``, which Perfetto and chrome://tracing open as
they are) and kept only when it is under ``profile_max_mb``: users of such tools complain about multi-GB
traces. The top operators by self time and the forward/backward/optimiser split (the loop's
``record_function`` ranges, :data:`RANGES`) go to ``ops.json`` for the report.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

#: The ranges the training step marks with ``torch.profiler.record_function``.
RANGES = ("binsight.forward", "binsight.backward", "binsight.optimizer")
TOP_OPERATORS = 15


class ProfileWindow:
    def __init__(self, out_dir: Path, steps: int, wait_steps: int, max_mb: float, cuda: bool):
        self.out_dir, self.steps, self.wait, self.max_mb, self.cuda = out_dir, steps, wait_steps, max_mb, cuda
        self.seen = 0
        self.done = steps <= 0
        self._prof: Any = None
        self.summary: dict[str, Any] | None = None

    def before_step(self) -> None:
        if self.done or self._prof is not None or self.seen < self.wait:
            return
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self._prof = profile(activities=activities, record_shapes=False, profile_memory=False, with_stack=False)
        self._prof.__enter__()
        self._started_at = self.seen

    def after_step(self) -> None:
        self.seen += 1
        if self._prof is not None and self.seen - self._started_at >= self.steps:
            self.finish()

    def finish(self) -> None:
        """Stop the profiler now (also when the epoch ends inside the window) and write what it saw."""
        if self._prof is None:
            return
        prof, self._prof = self._prof, None
        if self.cuda:
            torch.cuda.synchronize()
        prof.__exit__(None, None, None)
        self.done = True
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.summary = {"steps": self.seen - self._started_at, **_summarise(prof, self.cuda)}
        self.summary["trace"] = self._write_trace(prof)
        (self.out_dir / "ops.json").write_text(json.dumps(self.summary, indent=1), encoding="utf-8")

    def _write_trace(self, prof: Any) -> dict[str, Any]:
        target = self.out_dir / "trace.json.gz"
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(raw))
            with raw.open("rb") as src, gzip.open(target, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
        size_mb = target.stat().st_size / 2**20
        if size_mb > self.max_mb:
            target.unlink()
            return {"file": None, "size_mb": round(size_mb, 2), "dropped": f"above profile_max_mb {self.max_mb}"}
        return {"file": f"profile/{target.name}", "size_mb": round(size_mb, 3)}


def _summarise(prof: Any, cuda: bool) -> dict[str, Any]:
    averages = prof.key_averages()
    ranges = {}
    operators = []
    for event in averages:
        if event.key in RANGES:
            ranges[event.key.removeprefix("binsight.")] = {
                "cpu_ms": event.cpu_time_total / 1000,
                "device_ms": getattr(event, "device_time_total", 0.0) / 1000 if cuda else None,
                "count": event.count,
            }
            continue
        if event.key.startswith(("ProfilerStep", "binsight.")):
            continue
        operators.append(
            {
                "name": event.key,
                "count": event.count,
                "self_cpu_ms": event.self_cpu_time_total / 1000,
                "cpu_total_ms": event.cpu_time_total / 1000,
                "self_device_ms": (getattr(event, "self_device_time_total", 0.0) / 1000) if cuda else None,
            }
        )
    key = "self_device_ms" if cuda else "self_cpu_ms"
    operators.sort(key=lambda o: o[key] or 0.0, reverse=True)
    return {"ranges": ranges, "top_operators": operators[:TOP_OPERATORS], "sorted_by": key}
