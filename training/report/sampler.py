"""What the machine did while the run trained: a background thread samples it every ``interval_s``.

CPU per core, iowait, the resident memory of the process and its DataLoader workers, disk and network
rates come from psutil; each GPU's utilisation, memory and power from NVML (``nvidia-ml-py``). Without
psutil the sampler does not run, without NVML (no GPU, no driver) the GPU columns are absent: the rules
that need them say ``not evaluated``. Rows go to ``report/system.csv`` as they are taken, so a killed job
keeps what it sampled.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from training.report.store import CsvAppender

Sink = Callable[[dict[str, float], float], None]


def _nvml() -> tuple[Any, list[Any]] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no package, no driver, no GPU
        return None
    return (pynvml, handles) if handles else None


class SystemSampler:
    """Start with :meth:`start`, end with :meth:`stop`; ``available`` says whether psutil is there."""

    def __init__(self, path: Path, interval_s: float = 1.0, sink: Sink | None = None):
        self.path, self.interval_s, self.sink = path, interval_s, sink
        try:
            import psutil
        except ImportError:
            self.psutil = None
        else:
            self.psutil = psutil
        self.gpus = 0
        self.samples = 0
        self.cpu_s = 0.0  # this thread's own CPU time: what sampling costs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.psutil is not None

    def start(self) -> None:
        if self.psutil is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="binsight-system-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _rss_mb(self, process: Any) -> float:
        total = 0
        for proc in [process, *process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
        return total / 2**20

    def _run(self) -> None:
        started = time.thread_time()
        try:
            self._sample_until_stopped()
        finally:
            self.cpu_s = time.thread_time() - started

    def _sample_until_stopped(self) -> None:
        psutil = self.psutil
        nvml = _nvml()
        self.gpus = len(nvml[1]) if nvml else 0
        cores = psutil.cpu_count() or os.cpu_count() or 1
        columns = ["t", "cpu_percent", "cpu_max_core", *[f"cpu{i}" for i in range(cores)], "iowait", "rss_mb"]
        columns += ["disk_read_mb_s", "disk_write_mb_s", "net_rx_mb_s", "net_tx_mb_s"]
        for g in range(self.gpus):
            columns += [f"gpu{g}_util", f"gpu{g}_mem_mb", f"gpu{g}_mem_percent", f"gpu{g}_power_w"]
        out = CsvAppender(self.path, columns)
        process = psutil.Process()
        psutil.cpu_percent(percpu=True)
        psutil.cpu_times_percent()
        disk, net = psutil.disk_io_counters(), psutil.net_io_counters()
        started = last = time.monotonic()
        try:
            while not self._stop.wait(self.interval_s):
                cpu_started = time.thread_time()
                now = time.monotonic()
                dt = max(now - last, 1e-6)
                last = now
                per_core = psutil.cpu_percent(percpu=True)[:cores]
                per_core += [float("nan")] * (cores - len(per_core))
                times = psutil.cpu_times_percent()
                disk2, net2 = psutil.disk_io_counters(), psutil.net_io_counters()
                row: dict[str, float] = {
                    "t": round(now - started, 3),
                    "cpu_percent": sum(per_core) / cores,
                    "cpu_max_core": max(per_core),
                    **{f"cpu{i}": v for i, v in enumerate(per_core)},
                    "iowait": float(getattr(times, "iowait", float("nan"))),
                    "rss_mb": self._rss_mb(process),
                    "disk_read_mb_s": _rate(disk, disk2, "read_bytes", dt),
                    "disk_write_mb_s": _rate(disk, disk2, "write_bytes", dt),
                    "net_rx_mb_s": _rate(net, net2, "bytes_recv", dt),
                    "net_tx_mb_s": _rate(net, net2, "bytes_sent", dt),
                }
                disk, net = disk2, net2
                if nvml:
                    row.update(_gpu_row(*nvml))
                out.write([[_cell(row.get(c)) for c in columns]])
                self.samples += 1
                if self.sink is not None:
                    self.sink(row, row["t"])
                self.cpu_s += time.thread_time() - cpu_started
        finally:
            out.close()
            if nvml:
                try:
                    nvml[0].nvmlShutdown()
                except Exception:
                    pass


def _rate(before: Any, after: Any, name: str, dt: float) -> float:
    if before is None or after is None:
        return float("nan")
    return max(0, getattr(after, name) - getattr(before, name)) / dt / 2**20


def _gpu_row(pynvml: Any, handles: list[Any]) -> dict[str, float]:
    row: dict[str, float] = {}
    for g, handle in enumerate(handles):
        try:
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            row[f"gpu{g}_util"] = float(util.gpu)
            row[f"gpu{g}_mem_mb"] = memory.used / 2**20
            row[f"gpu{g}_mem_percent"] = 100.0 * memory.used / max(1, memory.total)
            row[f"gpu{g}_power_w"] = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000
        except Exception:  # a GPU that stopped answering leaves blanks
            continue
    return row


def _cell(value: float | None) -> str:
    if value is None or value != value:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
