"""Helpers for the real-browser tests: the app in a uvicorn server on a loopback port, Debian's chromium
driven by Playwright with every non-loopback request blocked, and screenshots for the README.

Chromium is the one from Debian (``apt-get install chromium``, which ``scripts/test.sh`` does when it is
missing and it runs as root), never a browser that ``playwright install`` downloads. Without it the
tests are skipped with the reason, and fail in CI (``CI=true``), where skipping would hide them.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
import uvicorn
from PIL import Image, ImageDraw
from torch import nn

from service.artifact import metadata_for
from service.predictor import Predictor

from serving_support import ARCH, LABELS, free_port

CHROMIUM = os.environ.get("BINSIGHT_CHROMIUM", "/usr/bin/chromium")
# Headless chromium without the background services that would call Google from a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--password-store=basic",
]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
# Where the tests write their screenshots: BINSIGHT_SCREENSHOT_DIR=docs/screenshots refreshes the README's.
SCREENSHOT_DIR_ENV = "BINSIGHT_SCREENSHOT_DIR"


def require_chromium() -> str:
    """The chromium executable, or skip (fail in CI) naming what is missing."""
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        problem = f"the playwright package is not installed ({exc}); ./scripts/test.sh installs it"
    if problem is None and not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        problem = (
            f"no chromium at {CHROMIUM} (BINSIGHT_CHROMIUM); ./scripts/test.sh installs Debian's package "
            "when run as root, or run `apt-get install chromium`"
        )
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run in CI: {problem}")
        pytest.skip(problem)
    return CHROMIUM


# ------------------------------------------------------------------------------- a model and photos with known answers


class BrightnessCounter(nn.Module):
    """A stand-in model whose answer is known from the photo: it "counts" the mean brightness b (0..1) of
    the photo as 6*b objects, with logits -4 (6b - k)^2 for class k. So photos of different brightness get
    different counts, a brightness halfway between two counts gets a low confidence, and the answer
    survives JPEG and resizing."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.register_buffer("classes", torch.arange(len(LABELS), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        brightness = (x * self.std + self.mean).mean(dim=(1, 2, 3))
        return -4.0 * (brightness[:, None] * 6.0 - self.classes[None, :]) ** 2


def brightness_predictor() -> Predictor:
    metadata = metadata_for(ARCH, LABELS, input_size=32)
    return Predictor(BrightnessCounter(metadata.mean, metadata.std), metadata, max_batch_size=8)


def bin_photo(count: float, size=(480, 360)) -> bytes:
    """A JPEG of a grey bin holding round(count) boxes, whose mean brightness makes :class:`BrightnessCounter`
    answer ``count`` (a fractional count gives an uncertain answer). Each box is lighter in red and darker
    in blue by the same amount, so boxes leave the mean brightness alone."""
    level = round(255 * count / 6)
    image = Image.new("RGB", size, (level, level, level))
    draw = ImageDraw.Draw(image)
    width, height = size
    boxes = max(0, round(count))
    for i in range(boxes):
        x = 30 + (i % 4) * (width - 60) // 4
        y = 40 + (i // 4) * (height - 80) // 2
        shade = 45 if level < 128 else -45
        draw.rectangle(
            (x, y, x + (width - 60) // 4 - 20, y + (height - 80) // 2 - 30),
            fill=(min(255, max(0, level + shade)), level, min(255, max(0, level - shade))),
            outline=(level // 2, level // 2, level // 2),
            width=3,
        )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# ------------------------------------------------------------------------------- the server


class ServerThread:
    """``app`` served by uvicorn on a free loopback port, in a daemon thread, lifespan included."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(15)


# ------------------------------------------------------------------------------- the browser

# Records what the page's Content-Security-Policy refused: such a request never reaches the network, so
# the request log alone would not show it.
_RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI));
"""


@dataclass
class NetworkLog:
    """Every request the browser tried, and those aborted because they would have left the host."""

    requested: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


def is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return (parts.hostname or "") in LOOPBACK_HOSTS


@dataclass
class Browser:
    """One chromium process (fresh profile) for a test module; :meth:`page` opens a guarded page."""

    playwright: object
    context: object
    network: NetworkLog
    profile: Path

    def page(self, width: int = 1280, height: int = 900):
        page = self.context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        page.console_errors = []  # type: ignore[attr-defined]
        page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.console_errors.append(f"page error: {e}"))
        return page

    def close(self) -> None:
        self.context.close()
        self.playwright.stop()
        shutil.rmtree(self.profile, ignore_errors=True)


def launch_browser(executable: str) -> Browser:
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    profile = Path(tempfile.mkdtemp(prefix="binsight-chromium-"))
    try:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            service_workers="block",
            accept_downloads=False,
        )
    except Exception:
        playwright.stop()
        shutil.rmtree(profile, ignore_errors=True)
        raise
    network = NetworkLog()

    def guard(route) -> None:
        url = route.request.url
        network.requested.append(url)
        if is_loopback(url):
            route.continue_()
        else:
            network.blocked.append(url)
            route.abort("internetdisconnected")

    context.route("**/*", guard)
    context.add_init_script(_RECORD_CSP_VIOLATIONS)
    for page in context.pages:  # the persistent context opens one blank page
        page.close()
    return Browser(playwright, context, network, profile)


def csp_violations(page) -> list[str]:
    return page.evaluate("window.__cspViolations || []")


# ------------------------------------------------------------------------------- screenshots


def save_screenshot(png: bytes, name: str, fallback_dir: Path, max_width: int = 1000) -> Path:
    """Write a screenshot, shrunk and reduced to 256 colours so the README's copies stay small, to
    $BINSIGHT_SCREENSHOT_DIR (the README's are in docs/screenshots) or else to ``fallback_dir``."""
    target_dir = Path(os.environ.get(SCREENSHOT_DIR_ENV) or fallback_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    path = target_dir / name
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path
