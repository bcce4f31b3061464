"""Graceful drain on SIGTERM (service/server.py, service/drain.py) and flat memory under a request loop.

The real-server test is issue 12's scenario in small: raw keep-alive clients mid-request, SIGTERM; every
request a client sent on an accepted connection gets an answer, /ping says 503 draining, responses carry
``Connection: close``, new connections are refused, and the process exits 0 well within its grace period.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.artifact import metadata_for
from service.drain import DRAIN_STATE_KEY, Drain
from service.error_docs import DRAINING
from service.predictor import Predictor
from service.settings import ModelLocation, ServeSettings

from serving_support import ARCH, LABELS, ROOT, FixedLogits, ServeProcess, jpeg, make_artifact

GRACE_S = 10


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------------------- in process


def with_drain(app, drain: Drain):
    """``app`` as uvicorn under service.server runs it: the drain in every request's scope["state"]."""

    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            scope = {**scope, "state": {**scope.get("state", {}), DRAIN_STATE_KEY: drain}}
        await app(scope, receive, send)

    return wrapped


def fixed_predictor() -> Predictor:
    return Predictor(FixedLogits([0, 0, 1, 4, 1, 0, 0]), metadata_for(ARCH, LABELS, input_size=32))


@pytest.mark.anyio
async def test_ping_says_draining_and_responses_close_the_connection_while_draining() -> None:
    drain = Drain(grace_s=25)
    app = create_app(ServeSettings(model=ModelLocation(path=None)), fixed_predictor())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=with_drain(app, drain)), base_url="http://t") as client,
    ):
        ready = await client.get("/ping")
        assert ready.status_code == 200 and "connection" not in ready.headers
        drain.begin("SIGTERM")
        ping = await client.get("/ping")
        assert ping.status_code == 503 and ping.headers["connection"] == "close"
        documented = app.openapi()["paths"]["/ping"]["get"]["responses"]["503"]["content"]["application/json"]
        example = documented["examples"]["draining"]["value"]
        hide = re.compile(r"\d+(\.\d+)?")
        assert ping.json()["status"] == example["status"] == "draining"
        assert hide.sub("N", ping.json()["detail"]) == hide.sub("N", example["detail"]) == hide.sub("N", DRAINING)
        answer = await client.post("/invocations", content=jpeg(), headers={"content-type": "image/jpeg"})
        assert answer.status_code == 200 and answer.headers["connection"] == "close"


# ------------------------------------------------------------------------------- a real server


@dataclass
class Tally:
    answered: int = 0
    answered_after_signal: int = 0
    closing: int = 0  # answers carrying Connection: close
    cut: list[str] = field(default_factory=list)  # sent on an open connection, no answer
    refused: int = 0  # a new connection after the listener closed (nothing was sent)
    pings: list[tuple[int, str]] = field(default_factory=list)


async def exchange(reader, writer, method: str, path: str, body: bytes = b"") -> tuple[int, bool, bytes]:
    """One request on an open connection -> (status, Connection: close?, body)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("closed without an answer")
    length, close = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        if name.strip().lower() == b"connection" and value.strip().lower() == b"close":
            close = True
    return int(status_line.split()[1]), close, await reader.readexactly(length)


async def keepalive_client(port: int, image: bytes, tally: Tally, signalled: asyncio.Event, stop: float) -> None:
    """POSTs one after another on one connection; reconnects after Connection: close until refused."""
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            tally.refused += 1
            return
        try:
            while time.monotonic() < stop:
                try:
                    status, close, _ = await exchange(reader, writer, "POST", "/invocations", image)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    tally.cut.append(f"{type(exc).__name__}: {exc}")
                    return
                assert status == 200, status
                tally.answered += 1
                tally.answered_after_signal += signalled.is_set()
                if close:
                    tally.closing += 1
                    break
        finally:
            writer.close()


async def pinger(port: int, tally: Tally, stop: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < stop:
            try:
                status, close, body = await exchange(reader, writer, "GET", "/ping")
            except (OSError, asyncio.IncompleteReadError) as exc:
                tally.cut.append(f"/ping: {type(exc).__name__}: {exc}")
                return
            tally.pings.append((status, body.decode()))
            if close:
                return
            await asyncio.sleep(0.05)
    finally:
        writer.close()


async def drive(server: ServeProcess, clients: int) -> tuple[Tally, float]:
    tally, signalled = Tally(), asyncio.Event()
    stop = time.monotonic() + 30
    image = jpeg(size=(320, 240))
    tasks = [asyncio.create_task(keepalive_client(server.port, image, tally, signalled, stop)) for _ in range(clients)]
    tasks.append(asyncio.create_task(pinger(server.port, tally, stop)))
    while tally.answered < 4 * clients:  # every client has its connection and is mid-stream
        await asyncio.sleep(0.02)
    server.process.send_signal(signal.SIGTERM)
    signalled.set()
    sent_at = time.monotonic()
    await asyncio.gather(*tasks)
    while server.process.poll() is None and time.monotonic() - sent_at < GRACE_S + 5:
        await asyncio.sleep(0.05)
    return tally, time.monotonic() - sent_at


@pytest.mark.slow
def test_sigterm_drains_keepalive_clients_without_losing_a_request(tmp_path: Path) -> None:
    artifact = make_artifact(tmp_path / "model")
    server = ServeProcess(artifact, tmp_path / "serve.log", extra_env={"BINSIGHT_GRACE_PERIOD_S": str(GRACE_S)})
    try:
        server.wait_ready()
        tally, exit_after_s = asyncio.run(drive(server, clients=64))
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0, log
    assert tally.cut == [], (tally.cut[:5], log[-3000:])
    assert tally.answered_after_signal > 0 and tally.closing == 64, tally
    statuses = [status for status, _ in tally.pings]
    assert statuses[-1] == 503 and '"status":"draining"' in tally.pings[-1][1], tally.pings[-3:]
    assert set(statuses[:-1]) <= {200}, statuses
    assert tally.refused == 64  # each client's new connection after its Connection: close
    assert exit_after_s < GRACE_S, (exit_after_s, log[-3000:])
    assert re.search(r"drain started: signal: SIGTERM grace_s: 10 connections: \d+", log), log[-3000:]
    assert "drain done" in log and "serve stopped" in log, log[-3000:]


def test_compose_stops_serve_only_after_its_grace_period() -> None:
    import yaml

    serve = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["serve"]
    stop_s = int(serve["stop_grace_period"].removesuffix("s"))
    grace = serve["environment"]["BINSIGHT_GRACE_PERIOD_S"]
    assert grace == "${BINSIGHT_GRACE_PERIOD_S:-%d}" % ServeSettings.model_fields["grace_period_s"].default
    assert ServeSettings.model_fields["grace_period_s"].default + 3 <= stop_s <= 30  # 30: SageMaker's SIGKILL
