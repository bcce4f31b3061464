"""Helpers for the serving tests: a tiny artifact made through the contract, image bytes of every
kind, an in-process client, and a real ``serve`` subprocess."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import torch
from PIL import Image
from torch import nn

from service.architectures import build_model
from service.artifact import count_labels, metadata_for, save_artifact

ROOT = Path(__file__).resolve().parents[1]
ARCH = "efficientnet_lite0"  # no torchvision needed; at 64 px it runs in milliseconds
INPUT_SIZE = 64
LABELS = count_labels(5, overflow=True)


def make_artifact(model_dir: Path, seed: int = 0, input_size: int = INPUT_SIZE, nan: bool = False) -> Path:
    torch.manual_seed(seed)
    model = build_model(ARCH, len(LABELS), pretrained=False)
    if nan:
        with torch.no_grad():
            model._fc.bias.fill_(float("nan"))
    metadata = metadata_for(
        ARCH, LABELS, input_size=input_size, metrics={"accuracy": 0.5}, data={"dataset": "synthetic test bins"}
    )
    return save_artifact(model_dir, model, metadata)


class FixedLogits(nn.Module):
    """A 'model' whose answer is known: the same logits for every image."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.logits.expand(x.shape[0], -1).clone()


# ------------------------------------------------------------------------------- images


def image_bytes(mode: str = "RGB", size=(160, 120), fmt: str = "JPEG", seed: int = 0, **save) -> bytes:
    """A small photo-like image (a smooth gradient with a few blocks) in ``mode`` and ``fmt``."""
    width, height = size
    base = Image.linear_gradient("L").resize(size)
    rgb = Image.merge("RGB", (base, base.rotate(90).resize(size), Image.new("L", size, 60 + seed * 10 % 180)))
    for i in range(3):
        x, y = (seed * 37 + i * 41) % max(1, width - 20), (seed * 17 + i * 29) % max(1, height - 20)
        rgb.paste((200, 40 + 60 * i, 30), (x, y, x + 18, y + 18))
    image = rgb
    if mode == "CMYK":
        image = rgb.convert("CMYK")
    elif mode == "RGBA":
        image = rgb.convert("RGBA")
        image.putalpha(Image.linear_gradient("L").resize(size))
    elif mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode == "I;16":
        image = Image.frombytes(
            "I;16", size, bytes(b for v in range(width * height) for b in struct.pack("<H", (v * 37) % 65536))
        )
    elif mode != "RGB":
        image = rgb.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def jpeg(seed: int = 0, size=(160, 120)) -> bytes:
    return image_bytes("RGB", size, "JPEG", seed=seed, quality=90)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------------------- in-process client


@asynccontextmanager
async def client_for(app):
    """An httpx client talking to ``app`` in process, with the app's lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://binsight.test") as client:
            yield client


async def wait_settled(client: httpx.AsyncClient, timeout: float = 60.0) -> httpx.Response:
    """Poll /ping until the model is no longer loading (ready or failed), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/ping")
        if response.json().get("status") != "loading" or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------- real server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """``serve`` in a subprocess on a free port; ``stop()`` sends SIGTERM and returns the exit code."""

    def __init__(
        self,
        model_dir: Path | None,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        args: tuple[str, ...] = ("serve",),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("MODEL_DIR", "SM_MODEL_DIR")}
        env.update(
            {
                "SAGEMAKER_BIND_TO_PORT": str(self.port),
                "BINSIGHT_HOST": "127.0.0.1",
                "BINSIGHT_TORCH_THREADS": "1",
                "BINSIGHT_ORT_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
                "BINSIGHT_CACHE_DIR": str(log_path.parent / "onnx-cache"),
            }
        )
        if model_dir is not None:
            env["MODEL_DIR"] = str(model_dir)
        env.update(extra_env or {})
        serve = Path(sys.executable).parent / "serve"
        command = [str(serve), *args] if serve.exists() else [sys.executable, "-m", "service", *args]
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"serve not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
