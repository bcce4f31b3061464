"""Does the serving image fit SageMaker Serverless Inference? Measured with the image built here.

    eval "$(bash ../shared/docker/engine.sh)"      # or any Docker engine
    .venv/bin/python benchmarks/serverless_bench.py --image binsight-serve:test --cold-starts 3 --memory 2g

The container runs as a serverless endpoint runs it (``serve``, the built-in default model, the environment
``deploy --serverless`` sets: SAGEMAKER_MAX_PAYLOAD_IN_MB=4, one worker), under ``--memory`` and ``--cpus``.
Prints ``key: value`` lines:

* ``image_size_mb``: what a cold serverless start pulls;
* ``cold_start_s``: ``docker run`` to the first ``/ping`` 200, each of ``--cold-starts`` runs, and the first
  ``/invocations`` latency after it (serverless needs /ping within 3 minutes, an answer within 60 s);
* the 4 MB body limit: a photo just under it answered, a body just over it refused with 413;
* under load (``--concurrency`` clients, ``--requests`` ABID photos, or generated ones): img/s, p50/p95
  latency, and the container's peak memory (cgroup ``memory.peak``, else the largest sampled
  ``memory.current``) and its anonymous (resident, not page cache) memory;
* ``suggested_memory_size_mb``: the smallest serverless size at or above peak x headroom
  (:func:`binsight_aws.serverless.memory_size_for`, the rule behind ``deploy --serverless``'s default).

A figure, not a test: only the serverless limits are checked (``limits_ok``), and the exit status is 1 when one
is missed. The machine it runs on may be busy; the figures are what it measured.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from binsight_aws.serverless import MEMORY_HEADROOM, PAYLOAD_LIMIT_MB, memory_size_for  # noqa: E402
from training.layouts import shrunk_copy_ids  # noqa: E402

ABID_IMAGES = ROOT.parent / "shared" / "abid" / "bin-images"
PING_LIMIT_S = 180.0
INVOKE_LIMIT_S = 60.0


def docker(*args: str, check: bool = True, timeout: float = 300) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, data: bytes | None = None, timeout: float = 70.0) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/x-image"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def phone_photos(images: list[bytes], count: int = 8) -> list[bytes]:
    """12-megapixel JPEGs (4032x3024, a phone camera's), each under the 4 MB limit: the decode-heavy case."""
    from PIL import Image

    out = []
    for data in images[:count]:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").resize((4032, 3024)).save(buffer, "JPEG", quality=92)
        out.append(buffer.getvalue())
    return out


def oversize_status(url: str, size: int) -> int:
    """The status a body of ``size`` bytes gets once its headers are sent (the server refuses it unread)."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("POST", parts.path)
        connection.putheader("Content-Type", "application/x-image")
        connection.putheader("Content-Length", str(size))
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def photos(count: int) -> tuple[list[bytes], str]:
    shrunk = shrunk_copy_ids(ABID_IMAGES.parent)  # copies already shrunk to 224x224 are not photos
    found = sorted(ABID_IMAGES.glob("*.jpg")) if ABID_IMAGES.is_dir() else []
    paths = [p for p in found if p.stem not in shrunk][:count]
    if paths:
        return [p.read_bytes() for p in paths], f"ABID photos from {ABID_IMAGES}"
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    out = []
    for _ in range(count):
        image = Image.new("RGB", (640, 480), (200, 190, 170))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.randrange(540), rng.randrange(400)
            draw.rectangle((x, y, x + 90, y + 70), fill=tuple(rng.randrange(256) for _ in range(3)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out, "generated 640x480 JPEGs"


def photo_near(size: int) -> bytes:
    """A valid JPEG of a little under ``size`` bytes (noise compresses badly, so few pixels do it)."""
    from PIL import Image

    side = 400
    while True:
        image = Image.effect_noise((side, side), 120).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=98)
        if buffer.tell() >= size * 0.9:
            break
        side = int(side * 1.25)
    while buffer.tell() > size:
        side = int(side * 0.97)
        buffer = io.BytesIO()
        Image.effect_noise((side, side), 120).convert("RGB").save(buffer, "JPEG", quality=98)
    return buffer.getvalue()


class Container:
    def __init__(self, image: str, memory: str, cpus: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.monotonic()
        self.id = docker(
            "run",
            "-d",
            "--rm",
            "--network",
            "host",
            "--memory",
            memory,
            "--cpus",
            cpus,
            "-e",
            f"SAGEMAKER_BIND_TO_PORT={self.port}",
            "-e",
            f"SAGEMAKER_MAX_PAYLOAD_IN_MB={PAYLOAD_LIMIT_MB}",
            "-e",
            "SAGEMAKER_MODEL_SERVER_WORKERS=1",
            image,
            "serve",
        )

    def wait_ping(self, limit_s: float) -> float | None:
        while time.monotonic() - self.started < limit_s:
            if http(self.url + "/ping", timeout=2)[0] == 200:
                return time.monotonic() - self.started
            time.sleep(0.1)
        return None

    def cgroup(self, name: str) -> str | None:
        proc = subprocess.run(
            ["docker", "exec", self.id, "cat", f"/sys/fs/cgroup/{name}"], capture_output=True, text=True, timeout=30
        )
        return proc.stdout.strip() if proc.returncode == 0 else None

    def memory_mb(self) -> tuple[float | None, float | None]:
        """(memory in use, anonymous = resident memory) in MB, from cgroup v2 or v1."""
        current = self.cgroup("memory.current") or self.cgroup("memory/memory.usage_in_bytes")
        stat = self.cgroup("memory.stat") or self.cgroup("memory/memory.stat") or ""
        fields = dict(line.split()[:2] for line in stat.splitlines() if len(line.split()) >= 2)
        anon = fields.get("anon") or fields.get("total_rss") or fields.get("rss")
        return (int(current) / 2**20 if current else None), (int(anon) / 2**20 if anon else None)

    def peak_mb(self) -> float | None:
        peak = self.cgroup("memory.peak") or self.cgroup("memory/memory.max_usage_in_bytes")
        return int(peak) / 2**20 if peak else None

    def stop(self) -> None:
        docker("stop", "-t", "10", self.id, check=False)


def cold_starts(args: argparse.Namespace, photo: bytes) -> list[tuple[float | None, float | None]]:
    runs = []
    for i in range(args.cold_starts):
        container = Container(args.image, args.memory, args.cpus)
        try:
            ping = container.wait_ping(PING_LIMIT_S)
            first = None
            if ping is not None:
                started = time.monotonic()
                status, _ = http(container.url + "/invocations", photo)
                first = time.monotonic() - started if status == 200 else None
            print(
                f"cold_start_run: {i + 1} ping_s: {ping if ping is None else round(ping, 2)} "
                f"first_invocation_s: {first if first is None else round(first, 3)}"
            )
            runs.append((ping, first))
        finally:
            container.stop()
    return runs


def load(container: Container, images: list[bytes], requests: int, concurrency: int) -> dict:
    samples: list[tuple[float | None, float | None]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(container.memory_mb())
            time.sleep(0.25)

    def one(i: int) -> tuple[int, float]:
        started = time.monotonic()
        status, _ = http(container.url + "/invocations", images[i % len(images)])
        return status, time.monotonic() - started

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    latencies = sorted(t for s, t in results if s == 200)
    peak = container.peak_mb()
    currents = [c for c, _ in samples if c is not None]
    anons = [a for _, a in samples if a is not None]
    return {
        "ok": len(latencies),
        "failed": len(results) - len(latencies),
        "img_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
        "peak_mb": peak if peak else (max(currents) if currents else None),
        "peak_source": "cgroup peak" if peak else "largest sampled usage",
        "anon_max_mb": max(anons) if anons else None,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="binsight-serve:test")
    parser.add_argument("--memory", default="2g", help="Container memory limit (a serverless memory size)")
    parser.add_argument("--cpus", default="1", help="CPUs the container may use")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--large-requests", type=int, default=40, help="12-megapixel photos sent after the load")
    parser.add_argument("--headroom", type=float, default=MEMORY_HEADROOM)
    parser.add_argument("--json", type=Path, help="Also write the figures here")
    return parser.parse_args(argv)


@dataclass
class Warm:
    """What one warm container measured: the statuses either side of the 4 MB limit and the two loads."""

    under: int  # a photo just under the limit
    over: int  # a body just over it
    figures: dict  # the load with ``--requests`` photos
    large: list[bytes]  # the 12-megapixel photos
    heavy: dict  # the load with them


def measure_warm(args: argparse.Namespace, images: list[bytes]) -> Warm:
    """Start one container, check the payload limit, then run the two loads on it (it is stopped after)."""
    container = Container(args.image, args.memory, args.cpus)
    try:
        if container.wait_ping(PING_LIMIT_S) is None:
            raise SystemExit("the container did not answer /ping within 3 minutes")
        limit = PAYLOAD_LIMIT_MB * 2**20
        under, _ = http(container.url + "/invocations", photo_near(limit - 4096))
        over = oversize_status(container.url + "/invocations", limit + 1)
        print(f"payload_limit_mb: {PAYLOAD_LIMIT_MB} just_under_status: {under} just_over_status: {over}")
        figures = load(container, images, args.requests, args.concurrency)
        large = phone_photos(images)
        heavy = load(container, large, args.large_requests, args.concurrency)
    finally:
        container.stop()
    return Warm(under, over, figures, large, heavy)


def print_loads(args: argparse.Namespace, warm: Warm) -> None:
    figures, heavy = warm.figures, warm.heavy
    print(
        f"load: requests: {args.requests} concurrency: {args.concurrency} ok: {figures['ok']} "
        f"failed: {figures['failed']} img_per_s: {figures['img_per_s']:.1f} p50_ms: {figures['p50_ms']:.0f} "
        f"p95_ms: {figures['p95_ms']:.0f}"
    )
    print(
        f"load_12mp: requests: {args.large_requests} concurrency: {args.concurrency} ok: {heavy['ok']} "
        f"mean_kb: {statistics.mean(map(len, warm.large)) / 1024:.0f} img_per_s: {heavy['img_per_s']:.1f} "
        f"p50_ms: {heavy['p50_ms']:.0f} p95_ms: {heavy['p95_ms']:.0f} anon_max_mb: {heavy['anon_max_mb']:.0f}"
    )


def memory_peak(args: argparse.Namespace, warm: Warm) -> float:
    """The peak over both loads (printed with the suggested size); ``warm.figures``' resident memory becomes
    the larger of the two loads'."""
    figures, heavy = warm.figures, warm.heavy
    # the cgroup peak covers both phases (it only grows); resident memory is the larger of the two phases'
    peak = max(heavy["peak_mb"], figures["peak_mb"])
    figures["anon_max_mb"] = max(heavy["anon_max_mb"], figures["anon_max_mb"])
    print(
        f"memory: peak_mb: {peak:.0f} ({figures['peak_source']}) anon_max_mb: {figures['anon_max_mb']:.0f} "
        f"headroom: {args.headroom:g} suggested_memory_size_mb: {memory_size_for(peak, args.headroom)}"
    )
    return peak


def limits_met(runs: list[tuple[float | None, float | None]], warm: Warm) -> dict[str, bool]:
    """The serverless limits, each met or not."""
    pings = [p for p, _ in runs if p is not None]
    firsts = [f for _, f in runs if f is not None]
    return {
        "ping_within_3_min": len(pings) == len(runs) and max(pings, default=0) <= PING_LIMIT_S,
        "first_invocation_within_60_s": len(firsts) == len(runs) and max(firsts, default=0) <= INVOKE_LIMIT_S,
        "under_4mb_answered": warm.under in (200, 400),  # noise has no bins; read and answered, not refused for size
        "over_4mb_413": warm.over == 413,
        "no_failed_requests": warm.figures["failed"] == 0 and warm.heavy["failed"] == 0,
    }


def write_record(
    args: argparse.Namespace,
    size: int,
    runs: list[tuple[float | None, float | None]],
    warm: Warm,
    peak: float,
    limits: dict[str, bool],
) -> None:
    record = {
        "image": args.image,
        "image_size_mb": size / 1e6,
        "memory_limit": args.memory,
        "cpus": args.cpus,
        "cold_starts": runs,
        "payload": {"under": warm.under, "over": warm.over},
        "load": warm.figures,
        "load_12mp": warm.heavy,
        "suggested_memory_size_mb": memory_size_for(peak, args.headroom),
        "limits": limits,
        "machine_cpus": os.cpu_count(),
    }
    args.json.write_text(json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = int(docker("image", "inspect", "--format", "{{.Size}}", args.image))
    print(f"image: {args.image} image_size_mb: {size / 1e6:.0f} memory_limit: {args.memory} cpus: {args.cpus}")
    images, source = photos(64)
    print(f"photos: {len(images)} source: {source} mean_kb: {statistics.mean(map(len, images)) / 1024:.0f}")
    runs = cold_starts(args, images[0])
    pings = [p for p, _ in runs if p is not None]
    if pings:
        print(f"cold_start_s: median: {statistics.median(pings):.2f} max: {max(pings):.2f} runs: {len(runs)}")
    warm = measure_warm(args, images)
    print_loads(args, warm)
    peak = memory_peak(args, warm)
    limits = limits_met(runs, warm)
    print("limits_ok: " + " ".join(f"{k}: {v}" for k, v in limits.items()))
    if args.json:
        write_record(args, size, runs, warm, peak, limits)
    return 0 if all(limits.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
