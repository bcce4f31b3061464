"""The served model's life cycle: loading (in the background) -> ready, or failed with a reason.

Loading runs on a daemon thread, so ``/ping`` answers at once while a large model loads and a
shutdown during loading does not wait for it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

import torch

from service.engine import InferenceEngine
from service.predictor import Predictor
from service.settings import ServeSettings

logger = logging.getLogger(__name__)

Loader = Callable[[ServeSettings], Predictor]
Status = Literal["loading", "ready", "failed"]


class ModelNotFoundError(FileNotFoundError):
    """No model directory was configured or found; the message lists where we looked."""


class ModelState:
    """What ``/ping`` reports and what the prediction routes use."""

    def __init__(self) -> None:
        self.status: Status = "loading"
        self.error: str | None = None
        self.predictor: Predictor | None = None
        self.engine: InferenceEngine | None = None
        self.since = time.monotonic()

    def set_ready(self, predictor: Predictor, engine: InferenceEngine) -> None:
        self.predictor, self.engine, self.status, self.error = predictor, engine, "ready", None

    def set_failed(self, error: str) -> None:
        self.status, self.error = "failed", error

    def describe(self) -> str:
        if self.status == "loading":
            return f"model is loading (for {time.monotonic() - self.since:.1f} s); retry shortly"
        if self.status == "failed":
            return f"model failed to load: {self.error}"
        return "model is ready"


def load_predictor(settings: ServeSettings) -> Predictor:
    """The default loader: the configured artifact, loaded and warmed up."""
    if settings.model.path is None:
        raise ModelNotFoundError(settings.model.not_found_message())
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    elif settings.workers > 1:  # torch's default, one thread per CPU in every worker, oversubscribes the CPU
        torch.set_num_threads(settings.cpus_per_worker)
    return Predictor.from_artifact(
        settings.model.path,
        max_batch_size=settings.max_batch_size,
        max_image_pixels=settings.max_image_pixels,
        warm_up=True,
        runtime=settings.runtime,
        precision=settings.precision,
        cache_dir=settings.cache_dir,
        threads=settings.runtime_threads,
        test_time_views=settings.test_time_views,
    )


def new_engine(predictor: Predictor, settings: ServeSettings) -> InferenceEngine:
    return InferenceEngine(
        predictor, decode_workers=settings.decode_workers, max_wait_s=settings.batch_wait_ms / 1000.0
    )


def settle_heap() -> None:
    """Collect what loading left behind, then move every object alive now out of the collector's sight.

    The loaded model, torch, ONNX Runtime and the app are ~230,000 objects that live as long as the process;
    a full collection walked them all, holding the GIL for 0.4 s on a busy 2-core machine, and /ping and
    every request waited behind it (issue 12). Frozen, a full collection walks only what requests create.
    """
    gc.collect()
    gc.freeze()


async def load_in_background(state: ModelState, settings: ServeSettings, loader: Loader, settle: bool = False) -> None:
    """Run ``loader`` on a daemon thread and move ``state`` to ready or failed; with ``settle`` (a serving
    process, not a test run) the heap is settled first (:func:`settle_heap`)."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[Predictor] = loop.create_future()

    def deliver(predictor: Predictor | None, error: BaseException | None) -> None:
        if outcome.done():
            return
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(predictor)

    def work() -> None:
        try:
            result, error = loader(settings), None
        except BaseException as exc:  # everything must reach /ping, even SystemExit from a library
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(deliver, result, error)
        except RuntimeError:  # the server stopped while we were loading
            pass

    logger.info("model loading: model_dir: %s source: %s", settings.model.path, settings.model.source or "none")
    threading.Thread(target=work, name="binsight-model-load", daemon=True).start()
    try:
        predictor = await outcome
        engine = new_engine(predictor, settings)
        await engine.start()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        message = (
            str(exc)
            if isinstance(exc, (ValueError, OSError, RuntimeError)) and str(exc)
            else f"{type(exc).__name__}: {exc}"
        )
        state.set_failed(message)
        logger.error("model load failed: error: %s", message)
        return
    if settle:
        settle_heap()
    state.set_ready(predictor, engine)
    logger.info(
        "model ready: architecture: %s runtime: %s precision: %s after_s: %.2f",
        predictor.metadata.architecture,
        predictor.runtime.name,
        predictor.runtime.precision,
        time.monotonic() - state.since,
    )
