"""``GET /execution-parameters``: what binsight asks SageMaker batch transform for.

Batch transform calls it once per container, before any ``/invocations``, when the job leaves
``MaxConcurrentTransforms`` (and ``BatchStrategy``, ``MaxPayloadInMB``) unset; without it the defaults
are 1 request at a time, ``MULTI_RECORD`` and 6 MB. One request at a time starves a server that batches:
the engine puts concurrent images into one forward pass, which on most hardware runs many images in
little more time than one.

So the first call measures it: forward passes of the check images at batch sizes 1, 2, 4, ... up to
``max_batch_size`` (each timed twice, the faster kept; growing stops once doubling the batch no longer
adds 5% throughput, or after 3 s), and recommends

* ``MaxConcurrentTransforms`` = workers x the smallest batch size within 90% of the best throughput
  (one image per request with ``SplitType`` None, so that many requests fill one batch in each worker),
  in SageMaker's range 1-100;
* ``BatchStrategy`` = ``MULTI_RECORD`` when batching pays (then ``SplitType=Line`` packs many JSON Lines
  records into one request, which the engine runs in batches), else ``SINGLE_RECORD``;
* ``MaxPayloadInMB`` = the body limit (``SAGEMAKER_MAX_PAYLOAD_IN_MB``) rounded down, 1-100.

The answer is cached per worker process; it is logged as one ``execution_parameters:`` line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from service.engine import InferenceEngine
from service.predictor import PreparedImage

logger = logging.getLogger(__name__)

MAX_CONCURRENT_TRANSFORMS = 100  # SageMaker's upper bound
MAX_PAYLOAD_IN_MB = 100  # CreateTransformJob's upper bound
GOOD_ENOUGH = 0.9  # of the best measured throughput
WORTH_DOUBLING = 1.05  # a doubled batch must add this much throughput to keep measuring
#: No larger batch is tried once measuring has taken this long (SageMaker waits for the answer; a slow or
#: busy CPU then recommends from the sizes measured so far).
BUDGET_S = 3.0

Strategy = Literal["MULTI_RECORD", "SINGLE_RECORD"]


class ExecutionParametersOut(BaseModel):
    """The JSON object SageMaker reads (exactly these three keys)."""

    MaxConcurrentTransforms: int = Field(..., ge=1, le=MAX_CONCURRENT_TRANSFORMS, examples=[8])
    BatchStrategy: Strategy = Field(..., examples=["MULTI_RECORD"])
    MaxPayloadInMB: int = Field(..., ge=1, le=MAX_PAYLOAD_IN_MB, examples=[6])


@dataclass(frozen=True)
class Throughput:
    batch_size: int
    images_per_s: float


def batch_sizes(limit: int) -> list[int]:
    """1, 2, 4, ... below ``limit``, then ``limit`` itself."""
    sizes, size = [], 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return sizes + [limit]


def measure(
    forward: Callable[[Sequence[PreparedImage]], object],
    images: Sequence[PreparedImage],
    limit: int,
    clock: Callable[[], float] = time.perf_counter,
    budget_s: float = BUDGET_S,
) -> list[Throughput]:
    """Forward throughput at growing batch sizes (see the module docstring); runs on the caller's thread."""
    measured: list[Throughput] = []
    began = clock()
    for size in batch_sizes(limit):
        if measured and clock() - began >= budget_s:
            break
        batch = [images[i % len(images)] for i in range(size)]
        seconds = math.inf
        for _ in range(2):
            start = clock()
            forward(batch)
            seconds = min(seconds, clock() - start)
        measured.append(Throughput(size, size / max(seconds, 1e-9)))
        if len(measured) >= 2 and measured[-1].images_per_s < WORTH_DOUBLING * measured[-2].images_per_s:
            break
    return measured


def recommend(measured: Sequence[Throughput], *, workers: int, max_payload_mb: float) -> ExecutionParametersOut:
    """The parameters for a server with ``workers`` processes measuring ``measured`` each."""
    best = max(t.images_per_s for t in measured)
    batch = min(t.batch_size for t in measured if t.images_per_s >= GOOD_ENOUGH * best)
    return ExecutionParametersOut(
        MaxConcurrentTransforms=max(1, min(MAX_CONCURRENT_TRANSFORMS, workers * batch)),
        BatchStrategy="MULTI_RECORD" if batch > 1 else "SINGLE_RECORD",
        MaxPayloadInMB=max(1, min(MAX_PAYLOAD_IN_MB, math.floor(max_payload_mb))),
    )


class ExecutionParameters:
    """The measured recommendation of one worker process, computed on the first call."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._value: ExecutionParametersOut | None = None

    async def get(self, engine: InferenceEngine, *, workers: int, max_payload_mb: float) -> ExecutionParametersOut:
        async with self._lock:
            if self._value is None:
                predictor = engine.predictor
                images = [predictor.prepare(data) for data in predictor.check_images()]
                measured = await engine.on_forward_thread(measure, predictor.forward, images, predictor.max_batch_size)
                self._value = recommend(measured, workers=workers, max_payload_mb=max_payload_mb)
                logger.info(
                    "execution_parameters: max_concurrent_transforms: %d batch_strategy: %s "
                    "max_payload_in_mb: %d measured_images_per_s: %s",
                    self._value.MaxConcurrentTransforms,
                    self._value.BatchStrategy,
                    self._value.MaxPayloadInMB,
                    ",".join(f"b{t.batch_size}={t.images_per_s:.1f}" for t in measured),
                )
            return self._value
