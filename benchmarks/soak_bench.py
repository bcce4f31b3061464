"""Soak: N ``POST /invocations`` at concurrency C against a real ``serve``; throughput, latency, RSS curve.

    .venv/bin/python benchmarks/soak_bench.py                                # 18,000 requests, 64 clients
    .venv/bin/python benchmarks/soak_bench.py --requests 6000 --concurrency 32 --out /tmp/soak
    .venv/bin/python benchmarks/soak_bench.py --env MALLOC_ARENA_MAX=2       # server environment on top
    .venv/bin/python benchmarks/soak_bench.py --url http://127.0.0.1:8080 --pid 1234   # a server already running

Each of the C clients holds one keep-alive HTTP/1.1 connection (as SDKs and load balancers do) and
sends real JPEGs (ABID photos from ``../shared/abid`` when present, else generated 640x480 ones) one
request after another. Meanwhile one more connection sends ``GET /ping`` every ``--ping-interval``
seconds: SageMaker marks a container unhealthy when /ping takes over 2 s, so its latency under load
is a figure of its own. The server's resident memory (``VmRSS``, and ``RssAnon``: the heap, without
the mapped model and libraries) is sampled every ``--sample-every`` answered requests.

Prints ``key: value`` lines (throughput, latency percentiles, /ping percentiles, RSS at 3,000 and at
the end, growth between them) and writes ``soak.csv`` (the RSS curve) and ``soak.png`` into ``--out``.
A figure, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from serve_bench import ROOT, free_port, load_images, percentile

DEFAULT_MODEL = ROOT / "service" / "default_model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=18_000, help="requests in all (N)")
    parser.add_argument("--concurrency", type=int, default=64, help="keep-alive clients (C)")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--images", choices=["auto", "abid", "synthetic"], default="auto")
    parser.add_argument("--num-images", type=int, default=64, help="distinct JPEGs cycled through")
    parser.add_argument("--sample-every", type=int, default=500, help="RSS sample every this many answers")
    parser.add_argument("--checkpoint", type=int, default=3_000, help="growth is measured from this request on")
    parser.add_argument("--ping-interval", type=float, default=0.25, help="seconds between /ping calls")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="server environment")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--serve-dir",
        type=Path,
        default=ROOT,
        help="source folder serve runs from (e.g. `git archive` of an older commit), for before/after figures",
    )
    parser.add_argument("--url", help="drive a server already running instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, for its RSS")
    parser.add_argument("--out", type=Path, default=Path("soak-out"), help="folder for soak.csv and soak.png")
    parser.add_argument("--label", default="", help="a name for this run in the output and the plot")
    parser.add_argument(
        "--compare", metavar="LABEL=CSV", help="also draw an earlier run's soak.csv (dashed) in the plot"
    )
    parser.add_argument(
        "--probe",
        choices=["none", "malloc", "tracemalloc"],
        default="none",
        help="run serve under serve_probe.py: glibc malloc figures (and Python's, slow) into OUT/probe.jsonl",
    )
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------- server and its memory


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) in MiB of ``pid`` and its children (uvicorn workers), from /proc."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    except OSError:
        pass
    rss = anon = 0.0
    for one in pids:
        try:
            status = Path(f"/proc/{one}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) / 1024
            elif line.startswith("RssAnon:"):
                anon += int(line.split()[1]) / 1024
    return rss, anon


def start_server(args: argparse.Namespace, workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(
        os.environ,
        MODEL_DIR=str(args.model_dir),
        SAGEMAKER_BIND_TO_PORT=str(port),
        SAGEMAKER_MODEL_SERVER_WORKERS=str(args.workers),
        BINSIGHT_HOST="127.0.0.1",
        BINSIGHT_ACCESS_LOG="false",
        BINSIGHT_CACHE_DIR=str(workdir / "onnx-cache"),
    )
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    log = (args.out / "serve.log").open("wb")
    command = [sys.executable, "-m", "service", "serve"]
    if args.probe != "none":
        command = [
            sys.executable,
            str(Path(__file__).with_name("serve_probe.py")),
            "--out",
            str(args.out / "probe.jsonl"),
        ]
        command += ["--tracemalloc"] if args.probe == "tracemalloc" else []
    process = subprocess.Popen(command, cwd=args.serve_dir, env=env, stdout=log, stderr=log)
    return process, port


# ------------------------------------------------------------------------------- client


class Connection:
    """One keep-alive HTTP/1.1 connection that reopens when the server answers ``Connection: close``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        head = f"{method} {path} HTTP/1.1\r\nHost: soak\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            self.close()
            raise ConnectionError("connection closed without an answer")
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        await reader.readexactly(length)
        if close:
            self.close()
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    pings: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[tuple[int, float, float, float]] = field(default_factory=list)  # (answered, seconds, rss, anon)


async def soak(host: str, port: int, pid: int | None, images: list[bytes], args: argparse.Namespace) -> Run:
    run = Run()
    next_index = 0
    start = time.perf_counter()
    done = asyncio.Event()

    def sample() -> None:
        if pid is not None:
            run.samples.append((len(run.latencies), time.perf_counter() - start, *memory_mb(pid)))

    async def client() -> None:
        nonlocal next_index
        connection = Connection(host, port)
        while next_index < args.requests:
            index, next_index = next_index, next_index + 1
            sent = time.perf_counter()
            try:
                status = await connection.request("POST", "/invocations", images[index % len(images)])
            except (ConnectionError, asyncio.IncompleteReadError):
                status = 0
            run.latencies.append(time.perf_counter() - sent)
            run.errors += status != 200
            if len(run.latencies) % args.sample_every == 0:
                sample()
        connection.close()

    async def pinger() -> None:
        connection = Connection(host, port)
        while not done.is_set():
            sent = time.perf_counter()
            await connection.request("GET", "/ping")
            run.pings.append(time.perf_counter() - sent)
            try:
                await asyncio.wait_for(done.wait(), args.ping_interval)
            except TimeoutError:
                pass
        connection.close()

    sample()
    pinging = asyncio.create_task(pinger())
    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    run.elapsed = time.perf_counter() - start  # type: ignore[attr-defined]
    done.set()
    await pinging
    sample()
    return run


# ------------------------------------------------------------------------------- report


def rss_at(samples: list[tuple[int, float, float, float]], answered: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) of the first sample at or after ``answered`` requests."""
    for n, _, rss, anon in samples:
        if n >= answered:
            return rss, anon
    return samples[-1][2], samples[-1][3]


def report(run: Run, args: argparse.Namespace) -> None:
    label = f"label: {args.label} " if args.label else ""
    lat = run.latencies
    print(
        f"{label}requests: {len(lat)} concurrency: {args.concurrency} errors: {run.errors} "
        f"seconds: {run.elapsed:.1f} req_per_s: {len(lat) / run.elapsed:.2f}"  # type: ignore[attr-defined]
    )
    print(
        f"{label}latency_ms p50: {statistics.median(lat) * 1000:.0f} p90: {percentile(lat, 90) * 1000:.0f} "
        f"p99: {percentile(lat, 99) * 1000:.0f} max: {max(lat) * 1000:.0f}"
    )
    if run.pings:
        print(
            f"{label}ping_ms calls: {len(run.pings)} p50: {statistics.median(run.pings) * 1000:.1f} "
            f"p99: {percentile(run.pings, 99) * 1000:.1f} max: {max(run.pings) * 1000:.1f}"
        )
    if run.samples:
        first, end = rss_at(run.samples, args.checkpoint), run.samples[-1][2:]
        print(
            f"{label}rss_mb start: {run.samples[0][2]:.0f} at_{args.checkpoint}: {first[0]:.0f} "
            f"end: {end[0]:.0f} growth_pct: {(end[0] / first[0] - 1) * 100:+.1f} "
            f"rss_anon_mb at_{args.checkpoint}: {first[1]:.0f} end: {end[1]:.0f} "
            f"anon_growth_pct: {(end[1] / first[1] - 1) * 100:+.1f}"
        )


def report_probe(args: argparse.Namespace) -> None:
    """glibc's view at the first, a middle and the last probe sample (what was in use vs kept free)."""
    path = args.out / "probe.jsonl"
    if args.probe == "none" or not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for name, row in (("early", rows[len(rows) // 6]), ("middle", rows[len(rows) // 2]), ("end", rows[-1])):
        print(
            f"probe {name}: t: {row['t']:.0f} rss_mb: {row['rss_mb']:.0f} threads: {row['threads']} "
            f"arenas: {row.get('arenas', 0)} heap_mb: {row['arena']:.0f} in_use_mb: {row['uordblks']:.0f} "
            f"free_kept_mb: {row['fordblks']:.0f} mmapped_mb: {row['hblkhd']:.0f}"
            + (f" python_mb: {row['python_mb']:.0f}" if "python_mb" in row else "")
        )


def write_curve(run: Run, args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "soak.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["requests", "seconds", "rss_mb", "rss_anon_mb"])
        writer.writerows((n, f"{s:.2f}", f"{r:.1f}", f"{a:.1f}") for n, s, r, a in run.samples)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: skipped (matplotlib not installed)")
        return
    figure, axis = plt.subplots(figsize=(7, 4))
    answered = [n for n, *_ in run.samples]
    axis.plot(answered, [r for *_, r, _ in run.samples], label="VmRSS")
    axis.plot(answered, [a for *_, a in run.samples], label="RssAnon (heap)")
    if args.compare:
        label, _, path = args.compare.partition("=")
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        axis.plot([int(r["requests"]) for r in rows], [float(r["rss_mb"]) for r in rows], "--", label=f"VmRSS, {label}")
    axis.set_xlabel("requests answered")
    axis.set_ylabel("MiB")
    axis.set_ylim(bottom=0)
    axis.set_title(f"serve RSS, {args.concurrency} keep-alive clients" + (f": {args.label}" if args.label else ""))
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.out / "soak.png", dpi=100)
    print(f"curve: {args.out / 'soak.csv'} plot: {args.out / 'soak.png'}")


async def wait_ready(host: str, port: int, process: subprocess.Popen | None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"serve exited with {process.returncode}")
        connection = Connection(host, port)
        try:
            if await connection.request("GET", "/ping") == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        await asyncio.sleep(0.2)
    raise SystemExit("serve did not become ready")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    images, source = load_images(args)
    print(
        f"images: {len(images)} source: {source} mean_kb: {sum(map(len, images)) / len(images) / 1024:.1f} "
        f"cpus: {os.cpu_count()} load_avg: {os.getloadavg()[0]:.2f} server_env: {shlex.join(args.env) or 'none'}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        process = None
        if args.url:
            host, _, port_text = args.url.removeprefix("http://").rstrip("/").partition(":")
            port, pid = int(port_text or 80), args.pid
        else:
            process, port = start_server(args, Path(tmp))
            host, pid = "127.0.0.1", process.pid
        try:
            asyncio.run(wait_ready(host, port, process))
            run = asyncio.run(soak(host, port, pid, images, args))
        finally:
            if process is not None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(300)  # --probe tracemalloc compares its snapshots on the way out: minutes
                except subprocess.TimeoutExpired:
                    process.kill()
    report(run, args)
    report_probe(args)
    if run.samples:
        write_curve(run, args)


if __name__ == "__main__":
    main()
