"""The parts of SageMaker's serving contract beyond /ping and /invocations: GET /execution-parameters
(batch transform), SAGEMAKER_MODEL_SERVER_TIMEOUT, SAGEMAKER_SAFE_PORT_RANGE."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch

from service.app import create_app
from service.execution_parameters import Throughput, batch_sizes, measure, recommend
from service.port_range import PortRange, parse_port_range
from service.predictor import Predictor
from service.settings import ModelLocation, ServeSettings, SettingsError

from serving_support import b64, client_for, jpeg, make_artifact, wait_settled


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("model"))


@pytest.fixture
def predictor(artifact: Path) -> Predictor:
    torch.set_num_threads(1)
    return Predictor.from_artifact(artifact, max_batch_size=8)


def settings_for(artifact: Path, **overrides) -> ServeSettings:
    return ServeSettings(model=ModelLocation(path=artifact, source="MODEL_DIR"), **overrides)


# ------------------------------------------------------------------------------- /execution-parameters


def test_recommendation_follows_the_measured_throughput() -> None:
    batching_pays = [Throughput(1, 10.0), Throughput(2, 19.0), Throughput(4, 35.0), Throughput(8, 38.0)]  # 4: 92%
    out = recommend(batching_pays, workers=2, max_payload_mb=6.0)
    assert out.model_dump() == {"MaxConcurrentTransforms": 8, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}
    flat = [Throughput(1, 10.0), Throughput(2, 10.2)]
    assert recommend(flat, workers=3, max_payload_mb=2.5).model_dump() == {
        "MaxConcurrentTransforms": 3,
        "BatchStrategy": "SINGLE_RECORD",
        "MaxPayloadInMB": 2,
    }
    huge = recommend([Throughput(64, 1.0)], workers=64, max_payload_mb=500)
    assert (huge.MaxConcurrentTransforms, huge.MaxPayloadInMB) == (100, 100)  # SageMaker's upper bounds
    assert recommend(flat, workers=1, max_payload_mb=0.5).MaxPayloadInMB == 1


def test_measurement_stops_once_doubling_no_longer_pays() -> None:
    assert batch_sizes(16) == [1, 2, 4, 8, 16] and batch_sizes(6) == [1, 2, 4, 6] and batch_sizes(1) == [1]
    now = [0.0]
    cost = {1: 0.1, 2: 0.1, 4: 0.2, 8: 0.4, 16: 0.8}  # seconds per batch: flat from 4 on
    calls: list[int] = []

    def forward(batch) -> None:
        calls.append(len(batch))
        now[0] += cost[len(batch)]

    measured = measure(forward, ["a", "b"], 16, clock=lambda: now[0])
    assert [(t.batch_size, round(t.images_per_s, 3)) for t in measured] == [(1, 10.0), (2, 20.0), (4, 20.0)]
    assert calls == [1, 1, 2, 2, 4, 4]  # each size twice; 8 and 16 never run
    calls.clear()
    assert [t.batch_size for t in measure(forward, ["a"], 16, clock=lambda: now[0], budget_s=0.3)] == [1, 2]
    assert calls == [1, 1, 2, 2]  # 0.4 s spent after batch 2: over the budget


@pytest.mark.anyio
async def test_execution_parameters_route(artifact: Path, predictor: Predictor, caplog) -> None:
    caplog.set_level(logging.INFO, logger="service.execution_parameters")
    settings = settings_for(artifact, workers=2, max_payload_mb=5.5)
    async with client_for(create_app(settings, predictor)) as client:
        first = await client.get("/execution-parameters")
        assert first.status_code == 200, first.text
        body = first.json()
        assert set(body) == {"MaxConcurrentTransforms", "BatchStrategy", "MaxPayloadInMB"}
        assert body["MaxPayloadInMB"] == 5 and body["BatchStrategy"] in ("MULTI_RECORD", "SINGLE_RECORD")
        assert 2 <= body["MaxConcurrentTransforms"] <= 2 * predictor.max_batch_size
        assert (body["BatchStrategy"] == "MULTI_RECORD") == (body["MaxConcurrentTransforms"] > 2)
        assert (await client.get("/execution-parameters")).json() == body  # cached: measured once (the log)
        assert (
            await client.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"})
        ).status_code == 200
    assert sum("execution_parameters: max_concurrent_transforms:" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------------------- SAGEMAKER_MODEL_SERVER_TIMEOUT


@pytest.mark.anyio
async def test_inference_past_the_model_server_timeout_is_504(
    artifact: Path, predictor: Predictor, monkeypatch
) -> None:
    slow = predictor.forward

    def forward(images):
        time.sleep(0.6)
        return slow(images)

    settings = ServeSettings.from_env({"MODEL_DIR": str(artifact), "SAGEMAKER_MODEL_SERVER_TIMEOUT": "0.3"})
    assert settings.model_server_timeout_s == 0.3
    async with client_for(create_app(settings, predictor)) as client:
        assert (await wait_settled(client)).status_code == 200
        monkeypatch.setattr(predictor, "forward", forward)
        late = await client.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"})
        assert late.status_code == 504
        assert late.json()["error"] == (
            "inference of 1 image(s) took longer than SAGEMAKER_MODEL_SERVER_TIMEOUT=0.3 "
            "s; send fewer images per request"
        )
        upload = await client.post("/predict", files={"files": ("a.jpg", jpeg(), "image/jpeg")})
        assert upload.status_code == 504
        monkeypatch.setattr(predictor, "forward", slow)
        time.sleep(0.7)  # the abandoned forward passes end
        again = await client.post("/invocations", content=jpeg(), headers={"Content-Type": "image/jpeg"})
        assert again.status_code == 200, again.text


def test_model_server_timeout_setting() -> None:
    assert ServeSettings.from_env({}).model_server_timeout_s == 60  # SageMaker's default
    with pytest.raises(SettingsError, match="SAGEMAKER_MODEL_SERVER_TIMEOUT='0'"):
        ServeSettings.from_env({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "0"})
    with pytest.raises(SettingsError, match="SAGEMAKER_MODEL_SERVER_TIMEOUT='soon'"):
        ServeSettings.from_env({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "soon"})


# ------------------------------------------------------------------------------- SAGEMAKER_SAFE_PORT_RANGE


def test_safe_port_range_is_read_and_checked() -> None:
    settings = ServeSettings.from_env({"SAGEMAKER_SAFE_PORT_RANGE": "9000-9999", "SAGEMAKER_BIND_TO_PORT": "8081"})
    assert settings.safe_port_range == PortRange(9000, 9999) and str(settings.safe_port_range) == "9000-9999"
    ports = settings.safe_port_range
    assert 9000 in ports and 9999 in ports and 8999 not in ports and 10000 not in ports
    assert ServeSettings.from_env({}).safe_port_range is None
    assert parse_port_range(" 23000 - 23999 ") == PortRange(23000, 23999) and parse_port_range("") is None
    for bad in ("9000", "9999-9000", "0-10", "9000-70000", "a-b"):
        with pytest.raises(SettingsError, match=f"SAGEMAKER_SAFE_PORT_RANGE='{bad}'"):
            ServeSettings.from_env({"SAGEMAKER_SAFE_PORT_RANGE": bad})


# ------------------------------------------------------------------------------- what batch transform sends


@pytest.mark.anyio
async def test_what_batch_transform_sends(artifact: Path, predictor: Predictor) -> None:
    """SplitType None: each S3 object is one request body, with the job's ContentType (or none at all);
    SplitType Line: one JSON Lines record per request (SingleRecord, often without a final newline) or as
    many as fit in MaxPayloadInMB (MultiRecord); AssembleWith Line wants one output line per record."""
    records = [f'{{"b64": "{b64(jpeg(i))}"}}' for i in range(3)]
    async with client_for(create_app(settings_for(artifact), predictor)) as client:
        for content_type in ("application/x-image", None):
            whole_object = await client.post(
                "/invocations", content=jpeg(), headers=({"Content-Type": content_type} if content_type else {})
            )
            assert whole_object.status_code == 200 and len(whole_object.json()["predictions"]) == 1
        lines = {"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"}
        single = await client.post("/invocations", content=records[0].encode(), headers=lines)
        assert single.status_code == 200 and single.text.count("\n") == 1
        multi = await client.post("/invocations", content="\n".join(records).encode(), headers=lines)
        assert multi.status_code == 200 and multi.text.count("\n") == 3
        rows = [json.loads(line) for line in multi.text.splitlines()]
        assert rows[0]["label"] == json.loads(single.text)["label"] and all("count" in row for row in rows)
