"""Runs a :class:`Predictor` inside an asyncio server without blocking the event loop.

* Decoding and resizing run on a thread pool (PIL releases the GIL), so many uploads are
  prepared at once.
* Forward passes run on one dedicated thread, one at a time: on a CPU a single forward already
  uses every core through torch's intra-op threads.
* Micro-batching: prepared images from concurrent requests wait in one queue and go through
  the model together, up to ``max_batch_size``. The batcher waits at most ``max_wait_s`` for
  more images, and only while other images are on their way (a request body being read, an
  image being decoded): a lone request never waits.
* At most ``max_in_flight`` images are decoded-but-not-yet-answered, which bounds memory even
  for a request with thousands of tiny images.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from service.predictor import ImageFailure, Prediction, PredictionResult, Predictor, PreparedImage
from service.preprocess import ImageDecodeError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class InferenceError(RuntimeError):
    """The model itself failed on a batch (not the caller's fault)."""


class InferenceEngine:
    """Async front of a :class:`Predictor`; create inside a running loop, ``await start()``, ``await close()``."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        decode_workers: int = 2,
        max_wait_s: float = 0.005,
        max_in_flight: int | None = None,
    ) -> None:
        self.predictor = predictor
        self.max_wait_s = max_wait_s
        self._decode_pool = ThreadPoolExecutor(max(1, decode_workers), thread_name_prefix="binsight-decode")
        self._forward_pool = ThreadPoolExecutor(1, thread_name_prefix="binsight-forward")
        self._slots = asyncio.Semaphore(max_in_flight or 4 * predictor.max_batch_size)
        self._queue: asyncio.Queue[tuple[PreparedImage, asyncio.Future]] = asyncio.Queue()
        self._pending = 0  # images (or announced requests) on their way to the queue
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.images = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._batch_loop(), name="binsight-batcher")

    async def close(self) -> None:
        if self.batches:
            logger.info(
                "inference stats: images: %d batches: %d mean_batch_size: %.2f",
                self.images,
                self.batches,
                self.images / self.batches,
            )
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(InferenceError("server is shutting down"))
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._forward_pool.shutdown(wait=False, cancel_futures=True)

    async def on_forward_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the forward thread, between batches (a measurement that must not overlap one)."""
        return await asyncio.get_running_loop().run_in_executor(self._forward_pool, fn, *args)

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Wrap the reading of a request body: while it lasts the batcher knows images are coming
        and may hold a batch back for them (up to ``max_wait_s``)."""
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    async def predict(self, images: Sequence[bytes]) -> list[PredictionResult]:
        """Predictions for ``images`` in order; unreadable ones become :class:`ImageFailure`."""
        if self._task is None:
            raise InferenceError("inference engine is not started")
        self._pending += len(images)  # counted at once: the tasks below start a loop turn later
        tasks = [asyncio.ensure_future(self._predict_one(data)) for data in images]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()

    async def _predict_one(self, data: bytes) -> PredictionResult:
        loop = asyncio.get_running_loop()
        counted = True
        try:
            async with self._slots:
                try:
                    prepared = await loop.run_in_executor(self._decode_pool, self.predictor.prepare, data)
                except ImageDecodeError as exc:
                    return ImageFailure(str(exc))
                finally:
                    self._pending -= 1
                    counted = False
                future: asyncio.Future[Prediction] = loop.create_future()
                self._queue.put_nowait((prepared, future))
                return await future
        finally:
            if counted:  # cancelled while waiting for a slot
                self._pending -= 1

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.predictor.max_batch_size
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < limit:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if self._pending == 0 or remaining <= 0:
                    break  # nobody else is about to arrive, or we waited long enough
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(image, future) for image, future in batch if not future.done()]
            if not live:
                continue
            try:
                predictions = await loop.run_in_executor(
                    self._forward_pool, self.predictor.forward, [image for image, _ in live]
                )
            except asyncio.CancelledError:
                for _, future in live:
                    if not future.done():
                        future.set_exception(InferenceError("server is shutting down"))
                raise
            except Exception as exc:  # a broken model must answer 500 to its callers, not hang them
                logger.exception("inference failed: batch_size: %d", len(live))
                error = InferenceError(f"inference failed: {type(exc).__name__}: {exc}")
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            self.images += len(live)
            for (_, future), prediction in zip(live, predictions):
                if not future.done():
                    future.set_result(prediction)
