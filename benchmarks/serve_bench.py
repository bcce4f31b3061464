"""Serving throughput: forward-only vs end-to-end HTTP, per runtime, same model, same machine, one run.

    .venv/bin/python benchmarks/serve_bench.py                       # efficientnet_lite0 @224, random init
    .venv/bin/python benchmarks/serve_bench.py --model-dir service/default_model --seconds 10
    .venv/bin/python benchmarks/serve_bench.py --model-dir DIR --runtimes torch onnxruntime onnxruntime-int8

Prints (as ``key: value`` lines), for each runtime (``torch`` = eager, what ``serve`` ran before
ONNX Runtime; ``onnxruntime`` = the fp32 graph derived from model.pth; ``onnxruntime-int8`` = the
artifact's model.int8.onnx from ``python -m training.quantize``):

* forward-only img/s at batch 1 and batch 8 (prepared images straight into ``Predictor.forward``,
  normalisation included, in this process),
* end-to-end ``POST /invocations`` img/s and p50/p99 latency at concurrency 1, 8 and 32, with
  real JPEG bytes (ABID photos from ``../shared/abid`` when present, else generated 640x480 JPEGs),
  against a real ``serve`` subprocess per runtime on a free port,
* the ratios end-to-end / forward-only: against torch-eager forward-only (concurrency 8 vs batch 8
  of torch is the headline figure) and against the same runtime's forward-only, plus the same
  ratio in CPU time per image (forward-only process vs the whole server process, decoding, HTTP
  and JSON included), which a busy shared machine disturbs far less than wall-clock rates,
* each server's cold start (process start to ``/ping`` 200; the ONNX Runtime one exports its graph
  into an empty cache) and, for ONNX Runtime, a second start with that cache warm.

Rounds interleave every measurement (forward-only of each runtime, then HTTP of each server), so
all figures see the same background load; the servers wait idle while another one is measured.
The load generator is a minimal asyncio HTTP/1.1 keep-alive client (one connection per
concurrent user) so that the client's own CPU use stays small next to the server's.
A figure, not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABID_IMAGES = ROOT.parent / "shared" / "abid" / "bin-images"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="artifact to serve (default: a random-init model)")
    parser.add_argument("--architecture", default="efficientnet_lite0", help="for the random-init model")
    parser.add_argument("--input-size", type=int, default=224, help="for the random-init model")
    parser.add_argument(
        "--images",
        choices=["auto", "abid", "synthetic"],
        default="auto",
        help="ABID photos (auto: when present) or generated 640x480 JPEGs",
    )
    parser.add_argument("--num-images", type=int, default=32, help="distinct JPEGs cycled through")
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per figure and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=["torch", "onnxruntime"],
        choices=list(RUNTIMES),
        help="what to measure (onnxruntime-int8 needs the artifact's model.int8.onnx)",
    )
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default (one per core)")
    parser.add_argument("--ort-threads", type=int, default=0, help="ONNX Runtime threads; 0: one per available CPU")
    parser.add_argument("--decode-threads", type=int, default=0, help="server decode threads; 0: serve's default")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of each server")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    return parser.parse_args(argv)


#: Runtime label -> (BINSIGHT_RUNTIME, BINSIGHT_PRECISION).
RUNTIMES = {
    "torch": ("torch", "fp32"),
    "onnxruntime": ("onnxruntime", "fp32"),
    "onnxruntime-int8": ("onnxruntime", "int8"),
}


# ------------------------------------------------------------------------------- inputs


def make_model(args: argparse.Namespace, workdir: Path) -> Path:
    if args.model_dir:
        return args.model_dir
    import torch

    from service.architectures import build_model
    from service.artifact import count_labels, metadata_for, save_artifact

    torch.manual_seed(0)
    labels = count_labels(5, overflow=True)
    model = build_model(args.architecture, len(labels), pretrained=False)
    metadata = metadata_for(args.architecture, labels, input_size=args.input_size, data={"note": "benchmark"})
    return save_artifact(workdir / "model", model, metadata)


def synthetic_jpegs(count: int, size=(640, 480)) -> list[bytes]:
    """Photo-like JPEGs: a smooth random field with boxes, so they compress like photos, not noise."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(0)
    out = []
    for _ in range(count):
        small = Image.frombytes("RGB", (32, 24), bytes(rng.randrange(256) for _ in range(32 * 24 * 3)))
        image = small.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(3))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(1, 8)):
            x, y = rng.randrange(size[0] - 120), rng.randrange(size[1] - 90)
            draw.rectangle(
                (x, y, x + rng.randint(40, 120), y + rng.randint(30, 90)),
                fill=tuple(rng.randrange(256) for _ in range(3)),
                outline=(0, 0, 0),
                width=2,
            )
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def abid_jpegs(count: int) -> list[bytes]:
    """Full-size ABID photos (not the copies already shrunk to 224x224)."""
    shrunk_list = ABID_IMAGES.parent / "resized_224.txt"
    shrunk = set(shrunk_list.read_text().split()) if shrunk_list.exists() else set()
    paths = [p for p in sorted(ABID_IMAGES.glob("*.jpg")) if p.stem not in shrunk]
    return [p.read_bytes() for p in paths[:count]]


def load_images(args: argparse.Namespace) -> tuple[list[bytes], str]:
    use_abid = args.images == "abid" or (args.images == "auto" and ABID_IMAGES.is_dir())
    if use_abid:
        images = abid_jpegs(args.num_images)
        if images:
            return images, f"ABID photos from {ABID_IMAGES}"
    return synthetic_jpegs(args.num_images), "generated 640x480 JPEGs"


# ------------------------------------------------------------------------------- forward only


class ForwardOnly:
    """Prepared images straight into ``Predictor.forward`` (normalisation included), in this process."""

    def __init__(
        self, model_dir: Path, images: list[bytes], args: argparse.Namespace, runtime: str, cache_dir: Path
    ) -> None:
        import torch

        from service.predictor import Predictor

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        name, precision = RUNTIMES[runtime]
        self.predictor = Predictor.from_artifact(
            model_dir,
            max_batch_size=args.max_batch_size,
            runtime=name,
            precision=precision,
            cache_dir=cache_dir,
            threads=args.ort_threads,
        )
        self.prepared = [self.predictor.prepare(data) for data in images]

    def rate(self, batch_size: int, seconds: float) -> tuple[float, float]:
        """(images per second, CPU seconds per image)."""
        batch = [self.prepared[i % len(self.prepared)] for i in range(batch_size)]
        self.predictor.forward(batch)  # warm this shape
        done, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            self.predictor.forward(batch)
            done += batch_size
        return done / (time.perf_counter() - start), (time.process_time() - cpu) / done


# ------------------------------------------------------------------------------- end to end


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    model_dir: Path, port: int, args: argparse.Namespace, log_path: Path, runtime: str, cache_dir: Path
) -> subprocess.Popen:
    name, precision = RUNTIMES[runtime]
    env = dict(
        os.environ,
        MODEL_DIR=str(model_dir),
        SAGEMAKER_BIND_TO_PORT=str(port),
        BINSIGHT_HOST="127.0.0.1",
        BINSIGHT_ACCESS_LOG="false",
        BINSIGHT_MAX_BATCH_SIZE=str(args.max_batch_size),
        BINSIGHT_BATCH_WAIT_MS=str(args.batch_wait_ms),
        BINSIGHT_RUNTIME=name,
        BINSIGHT_PRECISION=precision,
        BINSIGHT_CACHE_DIR=str(cache_dir),
        SAGEMAKER_MODEL_SERVER_WORKERS=str(args.workers),
    )
    for option, var in (
        ("torch_threads", "BINSIGHT_TORCH_THREADS"),
        ("ort_threads", "BINSIGHT_ORT_THREADS"),
        ("decode_threads", "BINSIGHT_DECODE_THREADS"),
    ):
        if getattr(args, option):
            env[var] = str(getattr(args, option))
    return subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
    )


class Server:
    """One ``serve`` subprocess for one runtime; ``start()`` returns its cold start in seconds."""

    def __init__(self, model_dir: Path, args: argparse.Namespace, runtime: str, workdir: Path) -> None:
        self.model_dir, self.args, self.runtime = model_dir, args, runtime
        self.cache_dir = workdir / f"cache-{runtime}"
        self.log_path = workdir / f"serve-{runtime}.log"
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    async def start(self) -> float:
        started = time.perf_counter()
        self.process = start_server(self.model_dir, self.port, self.args, self.log_path, self.runtime, self.cache_dir)
        await wait_ready(self.port, self.process)
        return time.perf_counter() - started

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        if code != 0:
            print(f"warning: serve ({self.runtime}) exited with {code}; log in {self.log_path}")
        self.process = None


class Connection:
    """One keep-alive HTTP/1.1 connection; just enough protocol for POST /invocations and GET /ping."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Connection":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "image/jpeg"
    ) -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        self.writer.close()


async def wait_ready(port: int, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"serve exited with {server.returncode}")
        try:
            connection = await Connection.open(port)
            status, _ = await connection.request("GET", "/ping")
            connection.close()
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("serve did not become ready")


async def load_level(port: int, images: list[bytes], concurrency: int, seconds: float) -> tuple[float, list[float]]:
    connections = [await Connection.open(port) for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    # warm-up: every connection sends one request first
    await asyncio.gather(
        *(c.request("POST", "/invocations", images[i % len(images)]) for i, c in enumerate(connections))
    )
    start = time.perf_counter()
    stop_at = start + seconds

    async def user(index: int, connection: Connection) -> None:
        nonlocal errors
        i = index
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            status, _ = await connection.request("POST", "/invocations", images[i % len(images)])
            latencies.append(time.perf_counter() - sent)
            errors += status != 200
            i += concurrency

    await asyncio.gather(*(user(i, c) for i, c in enumerate(connections)))
    elapsed = time.perf_counter() - start
    for connection in connections:
        connection.close()
    if errors:
        print(f"warning: {errors} requests did not answer 200")
    return len(latencies) / elapsed, latencies


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def measure(model_dir: Path, images: list[bytes], args: argparse.Namespace, workdir: Path) -> dict:
    """``rounds`` rounds of: forward-only b1, b8 of every runtime, then HTTP at each concurrency of every server.

    Interleaving keeps every figure under the same background load on a shared machine.
    """
    forward = {rt: ForwardOnly(model_dir, images, args, rt, workdir / "cache-forward") for rt in args.runtimes}
    servers = {rt: Server(model_dir, args, rt, workdir) for rt in args.runtimes}
    out: dict = {
        "forward": {rt: {1: [], 8: []} for rt in args.runtimes},
        "http": {rt: {c: [] for c in args.concurrency} for rt in args.runtimes},
        "server_cpu": {rt: {c: [] for c in args.concurrency} for rt in args.runtimes},
        "cold_start": {},
        "runtime": {rt: f.predictor.runtime for rt, f in forward.items()},
    }
    try:
        for rt, server in servers.items():
            out["cold_start"][rt] = await server.start()
        for round_ in range(args.rounds):
            for rt in args.runtimes:
                for batch_size in (1, 8):
                    out["forward"][rt][batch_size].append(forward[rt].rate(batch_size, args.seconds))
            for rt, server in servers.items():
                for concurrency in args.concurrency:
                    before = process_cpu_seconds(server.process.pid)
                    rate, latencies = await load_level(server.port, images, concurrency, args.seconds)
                    after = process_cpu_seconds(server.process.pid)
                    out["http"][rt][concurrency].append((rate, latencies))
                    if before is not None and after is not None and args.workers == 1:
                        # includes the warm-up request of each connection
                        out["server_cpu"][rt][concurrency].append((after - before) / (len(latencies) + concurrency))
            print(
                f"round: {round_ + 1} "
                + " ".join(
                    f"{rt}_forward_b8_img_per_s: {out['forward'][rt][8][-1][0]:.2f} "
                    f"{rt}_http_c8_img_per_s: {out['http'][rt][8][-1][0] if 8 in out['http'][rt] else float('nan'):.2f}"
                    for rt in args.runtimes
                ),
                flush=True,
            )
        for rt, server in servers.items():
            if RUNTIMES[rt] == ("onnxruntime", "fp32"):  # a second start finds the exported graph in its cache
                server.stop()
                out["cold_start"][rt + " (warm cache)"] = await server.start()
    finally:
        for server in servers.values():
            server.stop()
    return out


def _median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def report(out: dict, args: argparse.Namespace) -> None:
    for rt, info in out["runtime"].items():
        print(f"runtime: {rt} {info.log_fields()}")
    forward = {
        rt: {b: _median(r for r, _ in runs) for b, runs in by_batch.items()} for rt, by_batch in out["forward"].items()
    }
    forward_cpu = {
        rt: {b: _median(c for _, c in runs) for b, runs in by_batch.items()} for rt, by_batch in out["forward"].items()
    }
    for rt in forward:
        for batch_size, rate in forward[rt].items():
            print(
                f"forward_only runtime: {rt} batch: {batch_size} img_per_s: {rate:.2f} cpu_ms_per_img: "
                f"{forward_cpu[rt][batch_size] * 1000:.1f} (median of {args.rounds} rounds)"
            )
    e2e: dict = {}
    for rt, by_level in out["http"].items():
        e2e[rt] = {}
        for concurrency, runs in by_level.items():
            e2e[rt][concurrency] = _median(rate for rate, _ in runs)
            latencies = [latency for _, run in runs for latency in run]
            p50, p99 = statistics.median(latencies), percentile(latencies, 99)
            cpu = out["server_cpu"][rt][concurrency]
            print(
                f"end_to_end runtime: {rt} concurrency: {concurrency} img_per_s: {e2e[rt][concurrency]:.2f} "
                f"p50_ms: {p50 * 1000:.1f} p99_ms: {p99 * 1000:.1f} p99_over_p50: {p99 / p50:.2f} "
                f"requests: {len(latencies)}" + (f" server_cpu_ms_per_img: {_median(cpu) * 1000:.1f}" if cpu else "")
            )
    base = "torch" if "torch" in forward else None
    for rt, by_level in e2e.items():
        for concurrency, rate in by_level.items():
            reference = 1 if concurrency == 1 else 8
            line = f"ratio runtime: {rt} end_to_end_c{concurrency} / forward_only_b{reference}: "
            line += f"same_runtime: {rate / forward[rt][reference]:.3f}"
            if base:
                line += f" torch_eager: {rate / forward[base][reference]:.3f}"
            cpu = out["server_cpu"][rt][concurrency]
            if cpu:
                # CPU-time efficiency: what the same-runtime ratio would be on an otherwise idle CPU-bound
                # machine; far steadier than wall-clock rates on a shared one.
                line += f" cpu_efficiency: {forward_cpu[rt][reference] / _median(cpu):.3f}"
            print(line)
    if base:
        for rt in forward:
            if rt != base:
                print(
                    f"ratio forward_only_b8 {rt} / torch_eager: {forward[rt][8] / forward[base][8]:.2f} "
                    f"cpu_time: {forward_cpu[base][8] / forward_cpu[rt][8]:.2f}"
                )
    for label, seconds in out["cold_start"].items():
        print(f"cold_start runtime: {label} seconds_to_ping_200: {seconds:.2f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The same OpenMP policy `serve` uses, so that forward-only runs under the server's settings.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        workdir = Path(tmp)
        model_dir = make_model(args, workdir)
        images, source = load_images(args)
        mean_kb = sum(map(len, images)) / len(images) / 1024
        print(
            f"model_dir: {model_dir} images: {len(images)} source: {source} mean_kb: {mean_kb:.1f} "
            f"cpus: {os.cpu_count()} load_avg: {os.getloadavg()[0]:.2f}"
        )
        out = asyncio.run(measure(model_dir, images, args, workdir))
        report(out, args)
        print(f"load_avg_after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
