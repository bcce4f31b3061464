"""A bounded request loop against a real ``serve``: its resident memory must level off, not climb.

The long soak (18,000 requests, real photos, the default model) is ``benchmarks/soak_bench.py``; this is
the short version for CI: a tiny model, 600 requests at 16 keep-alive clients, RSS after 150 and at the end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from serving_support import ServeProcess, jpeg, make_artifact


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def loop_requests(server: ServeProcess, total: int, concurrency: int, sample_at: int) -> tuple[float, float]:
    images = [jpeg(seed=i, size=(320 + 16 * i, 240 + 8 * i)) for i in range(8)]  # sizes vary, as photos do
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    answered, early = 0, 0.0
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
        queue = iter(range(total))

        async def user() -> None:
            nonlocal answered, early
            for i in queue:
                response = await client.post(
                    "/invocations", content=images[i % 8], headers={"content-type": "image/jpeg"}
                )
                assert response.status_code == 200
                answered += 1
                if answered == sample_at:
                    early = rss_mb(server.process.pid)

        await asyncio.gather(*(user() for _ in range(concurrency)))
    return early, rss_mb(server.process.pid)


@pytest.mark.slow
def test_rss_levels_off_under_a_request_loop(tmp_path: Path) -> None:
    artifact = make_artifact(tmp_path / "model")
    server = ServeProcess(artifact, tmp_path / "serve.log", extra_env={"BINSIGHT_ACCESS_LOG": "false"})
    try:
        server.wait_ready()
        early, late = asyncio.run(loop_requests(server, total=600, concurrency=16, sample_at=150))
    finally:
        assert server.stop() == 0, server.log()
    assert late <= early * 1.05 + 8, f"RSS {early:.0f} MiB after 150 requests, {late:.0f} MiB after 600"


def test_glibc_gets_an_arena_limit_unless_another_allocator_or_a_limit_is_set() -> None:
    from service.allocator import ARENA_MAX, configure_allocator

    assert configure_allocator({"LD_PRELOAD": "/usr/local/lib/libjemalloc.so.2"}) == "jemalloc (LD_PRELOAD)"
    assert configure_allocator({"MALLOC_ARENA_MAX": "4"}).endswith("arena_max: 4 (MALLOC_ARENA_MAX)")
    assert configure_allocator({}) in (f"glibc arena_max: {ARENA_MAX}", "libc malloc (not glibc: left as it is)")
