"""A real `serve` subprocess: /ping, /invocations, concurrency, SIGTERM; and the serving import path."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from serving_support import ROOT, ServeProcess, b64, jpeg, make_artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("model"))


def test_serving_import_path_has_no_torchvision_nor_training(artifact: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        import service.app, service.__main__
        from service.model_state import load_predictor
        from service.settings import ServeSettings
        app = service.app.create_app(ServeSettings.from_env({{"MODEL_DIR": {str(artifact)!r}}}))
        predictor = load_predictor(ServeSettings.from_env({{"MODEL_DIR": {str(artifact)!r}}}))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torchvision", "training")))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_bad_configuration_exits_2_naming_the_variable(tmp_path: Path) -> None:
    server = ServeProcess(None, tmp_path / "serve.log", extra_env={"SAGEMAKER_BIND_TO_PORT": "eighty"})
    assert server.process.wait(60) == 2
    assert "SAGEMAKER_BIND_TO_PORT='eighty'" in server.log()


async def _hammer(url: str, total: int, concurrency: int) -> list[int]:
    images = [jpeg(seed=i, size=(200, 150)) for i in range(8)]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> int:
            async with gate:
                response = await client.post(
                    "/invocations", content=images[i % len(images)], headers={"Content-Type": "image/jpeg"}
                )
                if response.status_code == 200:
                    assert len(response.json()["predictions"]) == 1
                return response.status_code

        return await asyncio.gather(*(one(i) for i in range(total)))


def test_serve_subprocess_answers_survives_load_and_stops_cleanly(artifact: Path, tmp_path: Path) -> None:
    server = ServeProcess(artifact, tmp_path / "serve.log")
    try:
        server.wait_ready()
        ping = httpx.get(f"{server.url}/ping", timeout=5)
        assert ping.status_code == 200 and ping.json()["status"] == "ready"

        single = httpx.post(
            f"{server.url}/invocations", content=jpeg(), timeout=30, headers={"Content-Type": "image/jpeg"}
        )
        assert single.status_code == 200 and single.json()["predictions"][0]["label"]
        batch = httpx.post(
            f"{server.url}/invocations",
            timeout=30,
            headers={"Content-Type": "application/json"},
            content=json.dumps({"instances": [{"b64": b64(jpeg(i))} for i in range(3)]}),
        )
        assert batch.status_code == 200 and len(batch.json()["predictions"]) == 3

        # a chunked body (no Content-Length) above the 6 MiB default is cut off with 413
        def chunks():
            for _ in range(8):
                yield b"\0" * 2**20

        oversize = httpx.post(
            f"{server.url}/invocations", content=chunks(), timeout=30, headers={"Content-Type": "image/jpeg"}
        )
        assert oversize.status_code == 413

        statuses = asyncio.run(_hammer(server.url, total=200, concurrency=16))
        assert statuses == [200] * 200
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0, log
    lines = [line for line in log.splitlines() if line.strip()]
    pattern = re.compile(r"^time: \S+ level: [A-Z]+ logger: \S+ message: ")
    assert all(pattern.match(line) for line in lines), "\n".join(x for x in lines if not pattern.match(x))
    assert "path: /invocations status: 200" in log and "path: /ping status: 200" not in log
    assert "model ready" in log and "serve stopped" in log


def test_serve_with_two_workers(artifact: Path, tmp_path: Path) -> None:
    server = ServeProcess(artifact, tmp_path / "serve.log", extra_env={"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}, args=())
    try:
        server.wait_ready(timeout=120)
        deadline = time.monotonic() + 120
        while server.log().count("model ready") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # /ping answered by one worker; the other may still be loading its copy
        for _ in range(4):
            response = httpx.post(
                f"{server.url}/invocations", content=jpeg(), timeout=30, headers={"Content-Type": "image/jpeg"}
            )
            assert response.status_code == 200
    finally:
        code = server.stop()
    assert code == 0, server.log()
    log = server.log()
    assert log.count("model ready") == 2 and "died" not in log, log
