"""The FastAPI app in process (httpx + ASGI): every content type, every bad input, /ping states,
/predict, /model, /docs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from service.app import create_app
from service.artifact import ArtifactError
from service.manual_check import thresholds
from service.predictor import Predictor
from service.settings import ModelLocation, ServeSettings

from serving_support import LABELS, b64, client_for, image_bytes, jpeg, make_artifact, png_claiming, wait_settled

PAYLOAD_MB = 1.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def predictor(artifact: Path) -> Predictor:
    torch.set_num_threads(1)
    return Predictor.from_artifact(artifact, max_batch_size=4)


def settings_for(model_dir: Path | None, **overrides) -> ServeSettings:
    location = (
        ModelLocation(path=model_dir, source="MODEL_DIR")
        if model_dir
        else ModelLocation(
            path=None, tried=("MODEL_DIR (not set)", "SM_MODEL_DIR (not set)", "/opt/ml/model (no model.json)")
        )
    )
    return ServeSettings(model=location, max_payload_mb=PAYLOAD_MB, **overrides)


@pytest.fixture
async def client(artifact: Path, predictor: Predictor):
    async with client_for(create_app(settings_for(artifact), predictor)) as client:
        yield client


def _post(client, body: bytes, content_type: str | None, accept: str | None = None, path: str = "/invocations"):
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if accept is not None:
        headers["Accept"] = accept
    return client.post(path, content=body, headers=headers)


def _is_prediction(item: dict) -> bool:
    return (
        set(item) == {"count", "label", "confidence", "probabilities", "expected_count"}
        and list(item["probabilities"]) == LABELS
    )


# ------------------------------------------------------------------------------- content types


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type, data",
    [
        ("image/jpeg", jpeg()),
        ("image/png", image_bytes("RGB", fmt="PNG")),
        ("application/x-image", jpeg(4)),
        ("image/jpeg", image_bytes("CMYK", fmt="JPEG")),
        ("image/png", image_bytes("I;16", fmt="PNG")),
        ("image/png", image_bytes("RGBA", fmt="PNG")),
        ("image/png", image_bytes("P", fmt="PNG")),
        ("image/png", image_bytes("L", fmt="PNG")),
        ("image/png", image_bytes("LA", fmt="PNG")),
    ],
    ids=["jpeg", "png", "x-image", "cmyk", "png16", "rgba", "palette", "grey", "grey-alpha"],
)
async def test_raw_image_gives_one_prediction(client, content_type: str, data: bytes) -> None:
    response = await _post(client, data, content_type)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    (item,) = response.json()["predictions"]
    assert _is_prediction(item)


HEIC = (Path(__file__).parent / "fixtures" / "bin-96x72.heic").read_bytes()  # made with pillow-heif from
# serving_support.image_bytes(size=(96, 72)), quality 80: pi-heif, which serving uses, only decodes


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type, data",
    [
        ("image/webp", image_bytes(fmt="WEBP")),
        ("image/jpeg", image_bytes(fmt="WEBP")),  # the bytes decide the format, not the label
        ("image/heic", HEIC),
        ("image/gif", image_bytes("P", fmt="GIF")),
        ("image/avif", image_bytes(fmt="AVIF")),
        ("image/tiff", image_bytes(fmt="TIFF")),
        ("application/octet-stream", jpeg()),  # the SageMaker SDK's IdentitySerializer default
        ("binary/octet-stream", HEIC),
        (None, jpeg()),
    ],
    ids=["webp", "webp-as-jpeg", "heic", "gif", "avif", "tiff", "octet-stream", "s3-octet-stream", "no-type"],
)
async def test_every_format_the_decoder_reads(client, content_type, data: bytes) -> None:
    response = await _post(client, data, content_type)
    assert response.status_code == 200, response.text
    (item,) = response.json()["predictions"]
    assert _is_prediction(item)


@pytest.mark.anyio
async def test_octet_stream_batches_are_read_from_their_bytes(client) -> None:
    images = [jpeg(1), image_bytes(fmt="WEBP")]
    as_json = json.dumps({"instances": [{"b64": b64(d)} for d in images]}).encode()
    as_lines = "".join(json.dumps({"b64": b64(d)}) + "\n" for d in images).encode()
    for body in (as_json, as_lines):
        response = await _post(client, body, "application/octet-stream")
        assert response.status_code == 200 and len(response.json()["predictions"]) == 2, response.text
    typed = await _post(client, as_json, "application/json")
    assert typed.json() == (await _post(client, as_json, "application/octet-stream")).json()


@pytest.mark.anyio
async def test_sagemaker_headers_are_accepted(client) -> None:
    """InvokeEndpoint's CustomAttributes, InferenceId and friends arrive as X-Amzn-SageMaker-* headers:
    binsight reads none of them, and a request carrying them is answered as any other."""
    headers = {
        "Content-Type": "image/jpeg",
        "X-Amzn-SageMaker-Custom-Attributes": "trace_id=abc,expected=3",
        "X-Amzn-SageMaker-Inference-Id": "req-1",
        "X-Amzn-SageMaker-Target-Variant": "AllTraffic",
    }
    response = await client.post("/invocations", content=jpeg(), headers=headers)
    assert response.status_code == 200 and _is_prediction(response.json()["predictions"][0])
    assert not any(k.lower().startswith("x-amzn-sagemaker") for k in response.headers)


@pytest.mark.anyio
async def test_json_batch_and_jsonlines_agree(client) -> None:
    images = [jpeg(i) for i in range(5)]
    body = json.dumps({"instances": [{"b64": b64(d)} for d in images]}).encode()
    as_json = await _post(client, body, "application/json")
    assert as_json.status_code == 200
    predictions = as_json.json()["predictions"]
    assert len(predictions) == 5 and all(_is_prediction(p) for p in predictions)

    lines = "".join(json.dumps({"b64": b64(d)}) + "\n" for d in images).encode()
    as_lines = await _post(client, lines, "application/jsonlines", accept="application/jsonlines")
    assert as_lines.status_code == 200
    assert as_lines.headers["content-type"].startswith("application/jsonlines")
    rows = [json.loads(line) for line in as_lines.text.splitlines()]
    assert [r["label"] for r in rows] == [p["label"] for p in predictions]
    for row, prediction in zip(rows, predictions):
        assert row["probabilities"] == pytest.approx(prediction["probabilities"], abs=1e-4)

    single_as_lines = await _post(client, images[0], "image/jpeg", accept="application/jsonlines")
    assert single_as_lines.text.count("\n") == 1 and json.loads(single_as_lines.text)["label"] == rows[0]["label"]


@pytest.mark.anyio
async def test_batch_with_some_bad_images_answers_the_rest(client) -> None:
    body = json.dumps(
        {"instances": [{"b64": b64(jpeg())}, {"b64": b64(b"text, not an image")}, {"b64": b64(jpeg()[:300])}]}
    ).encode()
    response = await _post(client, body, "application/json")
    assert response.status_code == 200
    first, second, third = response.json()["predictions"]
    assert _is_prediction(first)
    assert "not a recognised image format" in second["error"]
    assert "truncated" in third["error"]


# ------------------------------------------------------------------------------- bad input

BAD_IMAGES = {
    "empty": (b"", "empty body"),
    "text": (b"hello, I am not a photo", "not a recognised image format"),
    "truncated-jpeg": (jpeg(size=(320, 240))[:1500], "truncated"),
    "huge-dimensions": (png_claiming(50000, 50000), "decompression bomb"),
    "above-pixel-limit": (png_claiming(8000, 6000), "8000x6000"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(BAD_IMAGES))
async def test_unreadable_image_is_400_naming_the_problem(client, name: str) -> None:
    data, message = BAD_IMAGES[name]
    response = await _post(client, data, "image/jpeg")
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.anyio
async def test_batch_where_nothing_can_be_read_is_400(client) -> None:
    body = json.dumps({"instances": [{"b64": b64(b"nope")}, {"b64": b64(b"")}]}).encode()
    response = await _post(client, body, "application/json")
    assert response.status_code == 400
    assert "image 0:" in response.json()["error"] and "image 1:" in response.json()["error"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type, body, status, message",
    [
        ("text/plain", b"hello", 415, "not supported"),
        ("image/svg+xml", jpeg(), 415, "not supported"),
        ("application/postscript", jpeg(), 415, "application/octet-stream (read from its bytes)"),
        ("application/octet-stream", b"\x00\x01 not an image", 400, "not a recognised image format"),
        ("application/json", b"{bad json", 400, "not valid JSON"),
        ("application/json", b'{"instances": [{"b64": "!!!"}]}', 400, "not valid base64"),
        ("application/json", b'{"instances": []}', 400, "non-empty"),
        ("application/json", b"", 400, "empty body"),
        ("application/jsonlines", b'{"b64": "YQ=="}\nnot json', 400, "line 2"),
    ],
)
async def test_bad_requests(client, content_type, body: bytes, status: int, message: str) -> None:
    response = await _post(client, body, content_type)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.anyio
async def test_unservable_accept_is_406(client) -> None:
    response = await _post(client, jpeg(), "image/jpeg", accept="text/csv")
    assert response.status_code == 406 and "application/jsonlines" in response.json()["error"]


@pytest.mark.anyio
async def test_oversize_body_is_413(client) -> None:
    big = b"\xff\xd8" + b"\0" * int(PAYLOAD_MB * 2**20)
    response = await _post(client, big, "image/jpeg")
    assert response.status_code == 413
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in response.json()["error"]
    multipart = await client.post("/predict", files={"files": ("big.jpg", big, "image/jpeg")})
    assert multipart.status_code == 413


@pytest.mark.anyio
async def test_oversize_body_without_content_length_is_413(artifact: Path, predictor: Predictor) -> None:
    """A streamed body is cut off once it passes the limit, even without a Content-Length header."""
    app = create_app(settings_for(artifact), predictor)
    chunk = b"\0" * 65536
    sent = 0

    async def stream():
        nonlocal sent
        for _ in range(int(PAYLOAD_MB * 2**20) // len(chunk) * 4):
            sent += len(chunk)
            yield chunk

    async with client_for(app) as client:
        response = await client.post("/invocations", content=stream(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 413
    assert "content-length" not in {k.lower() for k in response.request.headers}


# ------------------------------------------------------------------------------- /predict


@pytest.mark.anyio
async def test_predict_upload_with_expected_quantity(client) -> None:
    files = [
        ("files", ("bin-1.jpg", jpeg(1), "image/jpeg")),
        ("files", ("bin-2.png", image_bytes(fmt="PNG"), "image/png")),
        ("files", ("notes.txt", b"not a photo", "text/plain")),
    ]
    response = await client.post("/predict", files=files, data={"expected_quantity": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["architecture"] == "efficientnet_lite0" and body["labels"] == LABELS
    first, second, third = body["results"]
    assert [first["filename"], second["filename"], third["filename"]] == ["bin-1.jpg", "bin-2.png", "notes.txt"]
    for photo in (first, second):
        assert photo["expected_quantity"] == 3
        assert photo["probability_expected"] == photo["probabilities"]["3"]
        assert photo["matches_expected"] == (photo["label"] == "3")
        # an untrained 7-way model is never confident: both checks fire
        assert photo["needs_manual_check"] and len(photo["manual_check_reasons"]) == 2
    assert third["error"] and third["needs_manual_check"] and third["count"] is None


@pytest.mark.anyio
async def test_predict_reads_what_invocations_reads(client) -> None:
    files = [
        ("files", ("a.webp", image_bytes(fmt="WEBP"), "image/webp")),
        ("files", ("b.heic", HEIC, "image/heic")),
        ("files", ("c.bin", jpeg(), "application/octet-stream")),
        ("files", ("notes.txt", b"shopping list", "text/plain")),
    ]
    response = await client.post("/predict", files=files)
    assert response.status_code == 200, response.text
    first, second, third, fourth = response.json()["results"]
    assert all(photo["error"] is None and photo["count"] is not None for photo in (first, second, third))
    assert "not a recognised image format" in fourth["error"] and fourth["count"] is None
    labelled_wrong = await client.post("/predict", files={"files": ("a.txt", HEIC, "text/plain")})
    assert labelled_wrong.status_code == 200 and labelled_wrong.json()["results"][0]["error"] is None


@pytest.mark.anyio
async def test_predict_without_expected_quantity(client) -> None:
    response = await client.post("/predict", files={"files": ("a.jpg", jpeg(), "image/jpeg")})
    (photo,) = response.json()["results"]
    assert photo["expected_quantity"] is None and photo["probability_expected"] is None
    assert photo["count"] == int(photo["label"].rstrip("+"))


@pytest.mark.anyio
async def test_predict_bad_input(client) -> None:
    none_readable = await client.post("/predict", files={"files": ("a.jpg", b"zzz", "image/jpeg")})
    assert none_readable.status_code == 400 and "a.jpg" in none_readable.json()["error"]
    no_files = await client.post("/predict", data={"expected_quantity": "2"})
    assert no_files.status_code == 422 and "files" in no_files.json()["error"]
    negative = await client.post(
        "/predict", files={"files": ("a.jpg", jpeg(), "image/jpeg")}, data={"expected_quantity": "-1"}
    )
    assert negative.status_code == 422 and "expected_quantity" in negative.json()["error"]
    words = await client.post(
        "/predict", files={"files": ("a.jpg", jpeg(), "image/jpeg")}, data={"expected_quantity": "three"}
    )
    assert words.status_code == 422


# ------------------------------------------------------------------------------- /model, /docs, /


@pytest.mark.anyio
async def test_model_metadata(client, artifact: Path) -> None:
    response = await client.get("/model")
    assert response.status_code == 200
    body = response.json()
    assert body["model_dir"] == str(artifact)
    assert body["metadata"]["architecture"] == "efficientnet_lite0" and body["metadata"]["labels"] == LABELS
    assert body["metadata"]["input_size"] == 64 and body["metadata"]["metrics"] == {"accuracy": 0.5}
    assert body["class_values"] == [0, 1, 2, 3, 4, 5, 6] and body["max_batch_size"] == 4


@pytest.mark.anyio
async def test_docs_explain_the_api(client) -> None:
    root = await client.get("/")  # the page for people (tests/test_docs_ui.py), which links to /docs
    assert root.status_code == 200 and 'href="docs"' in root.text
    assert (await client.get("/docs")).status_code == 200
    schema = (await client.get("/openapi.json")).json()
    assert {"/ping", "/invocations", "/predict", "/model"} <= set(schema["paths"])
    invocation_types = set(schema["paths"]["/invocations"]["post"]["requestBody"]["content"])
    assert {
        "image/jpeg",
        "image/png",
        "application/x-image",
        "application/json",
        "application/jsonlines",
    } <= invocation_types
    upload = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    assert schema["components"]["schemas"]["PredictionOut"]["properties"]["count"]["examples"] == [3]


# ------------------------------------------------------------------------------- /ping states


@pytest.mark.anyio
async def test_ping_is_503_while_loading_then_200(artifact: Path, predictor: Predictor) -> None:
    release = threading.Event()

    def slow_loader(settings: ServeSettings) -> Predictor:
        release.wait(30)
        return predictor

    async with client_for(create_app(settings_for(artifact), loader=slow_loader)) as client:
        loading = await client.get("/ping")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        refused = await _post(client, jpeg(), "image/jpeg")
        assert refused.status_code == 503 and "loading" in refused.json()["error"]
        assert (await client.get("/model")).status_code == 503
        release.set()
        ready = await wait_settled(client)
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "detail": None}
        assert (await _post(client, jpeg(), "image/jpeg")).status_code == 200


@pytest.mark.anyio
async def test_ping_is_503_after_a_load_failure(tmp_path: Path) -> None:
    model_dir = make_artifact(tmp_path / "broken")
    (model_dir / "model.json").write_text(
        json.dumps({"architecture": "resnet9000", "labels": ["0", "1"], "mean": [0, 0, 0], "std": [1, 1, 1]})
    )
    async with client_for(create_app(settings_for(model_dir))) as client:
        response = await wait_settled(client, timeout=30)
        assert response.status_code == 503
        assert response.json()["status"] == "failed" and "resnet9000" in response.json()["detail"]
        invocation = await _post(client, jpeg(), "image/jpeg")
        assert invocation.status_code == 503 and "failed to load" in invocation.json()["error"]


@pytest.mark.anyio
async def test_ping_is_503_when_warm_up_fails(tmp_path: Path) -> None:
    async with client_for(create_app(settings_for(make_artifact(tmp_path / "nan", nan=True)))) as client:
        response = await wait_settled(client, timeout=60)
        assert response.status_code == 503 and "warm-up" in response.json()["detail"]


@pytest.mark.anyio
async def test_ping_names_the_places_tried_when_there_is_no_model() -> None:
    async with client_for(create_app(settings_for(None))) as client:
        response = await wait_settled(client, timeout=30)
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert "no model found" in detail and "SM_MODEL_DIR (not set)" in detail and "/opt/ml/model" in detail


@pytest.mark.anyio
async def test_loader_exceptions_of_any_kind_reach_ping(artifact: Path) -> None:
    def failing(settings: ServeSettings) -> Predictor:
        raise ArtifactError("model.pth is missing")

    async with client_for(create_app(settings_for(artifact), loader=failing)) as client:
        response = await wait_settled(client, timeout=30)
        assert response.status_code == 503 and "model.pth is missing" in response.json()["detail"]


@pytest.mark.anyio
async def test_shutdown_while_loading_does_not_wait_for_the_loader(artifact: Path) -> None:
    never = threading.Event()

    def stuck_loader(settings: ServeSettings) -> Predictor:
        never.wait(60)
        raise RuntimeError("released")

    started = time.monotonic()
    async with client_for(create_app(settings_for(artifact), loader=stuck_loader)) as client:
        assert (await client.get("/ping")).status_code == 503
    assert time.monotonic() - started < 10
    never.set()


def test_manual_check_thresholds_come_from_settings_then_the_model_then_a_fallback() -> None:
    recommended = {"manual_check": {"thresholds": {"min_confidence": 0.0, "min_expected_probability": 0.15}}}
    assert thresholds(None, None, recommended) == (0.0, 0.15)
    assert thresholds(0.3, None, recommended) == (0.3, 0.15)
    assert thresholds(None, None, {}) == (0.5, 0.5)
    assert thresholds(None, None, {"manual_check": {"thresholds": {"min_confidence": "high"}}}) == (0.5, 0.5)


@pytest.mark.anyio
async def test_predict_uses_the_models_recommended_thresholds(artifact: Path, predictor: Predictor) -> None:
    saved = predictor.metadata.metrics
    predictor.metadata.metrics = {
        **saved,
        "manual_check": {"thresholds": {"min_confidence": 0.0, "min_expected_probability": 0.0}},
    }
    try:
        async with client_for(create_app(settings_for(artifact), predictor)) as client:
            await wait_settled(client)
            files = [("files", ("bin.jpg", jpeg(1), "image/jpeg"))]
            photo = (await client.post("/predict", files=files, data={"expected_quantity": "3"})).json()["results"][0]
            assert not photo["needs_manual_check"] and photo["manual_check_reasons"] == []
        # a configured threshold still wins over the model's recommendation
        settings = settings_for(artifact, manual_check_expected_probability=1.0)
        async with client_for(create_app(settings, predictor)) as client:
            await wait_settled(client)
            photo = (await client.post("/predict", files=files, data={"expected_quantity": "3"})).json()["results"][0]
            assert photo["needs_manual_check"] and len(photo["manual_check_reasons"]) == 1
    finally:
        predictor.metadata.metrics = saved
