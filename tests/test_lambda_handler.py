"""The Lambda handler end to end without AWS: photos in moto's S3, a real ``serve`` process answering through the
URL invoker, results written beside them; duplicates, corrupt photos and a model that is down; the Function URL
answering what ``POST /predict`` answers."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from binsight_aws.lambda_fn.counting import Counter
from binsight_aws.lambda_fn.handler import handle
from binsight_aws.lambda_fn.invokers import ModelUnavailable, UrlInvoker
from binsight_aws.lambda_fn.settings import LambdaSettings, SettingsError, load_settings

from aws_support import client, fake_aws_env, moto_endpoint, reset_moto  # noqa: F401
from serving_support import ROOT, ServeProcess, jpeg, make_artifact

BUCKET = "station-photos"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lambda-serve")
    # torch serves: no ONNX export at start-up (the runtime is not what these tests are about)
    process = ServeProcess(make_artifact(root / "model"), root / "serve.log", {"BINSIGHT_RUNTIME": "torch"})
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def s3(moto_endpoint: str):  # noqa: F811
    reset_moto(moto_endpoint)
    s3 = client("s3", moto_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    return s3


def settings_for(url: str, **extra) -> LambdaSettings:
    return LambdaSettings(
        invocations_url=url, bucket=BUCKET, input_prefix="incoming/", results_prefix="results/", **extra
    )


def s3_event(s3, key: str) -> dict:
    etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    quoted = key.replace(" ", "+")
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": BUCKET}, "object": {"key": quoted, "eTag": etag, "size": 1}},
            }
        ]
    }


def result(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_s3_trigger_counts_writes_results_and_is_idempotent(server: ServeProcess, s3) -> None:
    counter = Counter(UrlInvoker(server.url), settings_for(server.url))
    s3.put_object(Bucket=BUCKET, Key="incoming/st 1/bin-a.jpg", Body=jpeg(1), Metadata={"expected-quantity": "2"})
    s3.put_object(Bucket=BUCKET, Key="incoming/st 1/bin-b_qty-1.jpg", Body=jpeg(2))
    s3.put_object(Bucket=BUCKET, Key="incoming/st 1/corrupt.jpg", Body=b"\xff\xd8 not a photo")
    lines: list[str] = []
    for key in ("incoming/st 1/bin-a.jpg", "incoming/st 1/bin-b_qty-1.jpg", "incoming/st 1/corrupt.jpg"):
        handle(s3_event(s3, key), counter, s3, lines.append)

    a = result(s3, "results/st 1/bin-a.jpg.json")
    assert a["status"] == "ok" and a["source"] == f"s3://{BUCKET}/incoming/st 1/bin-a.jpg"
    photo = a["results"][0]
    assert photo["expected_quantity"] == 2 and photo["probability_expected"] is not None
    assert set(photo["probabilities"]) == set(a["labels"]) and 0 <= photo["confidence"] <= 1
    assert isinstance(photo["needs_manual_check"], bool) and photo["filename"] == "bin-a.jpg"
    assert result(s3, "results/st 1/bin-b_qty-1.jpg.json")["results"][0]["expected_quantity"] == 1
    bad = result(s3, "results/st 1/corrupt.jpg.json")
    assert bad["status"] == "error" and bad["results"][0]["needs_manual_check"]
    assert "photo could not be read" in bad["results"][0]["manual_check_reasons"][0]
    assert any("corrupt.jpg status: error" in x for x in lines)

    # the same event again (S3 delivers at least once): one result, not rewritten, the model not asked
    before = s3.head_object(Bucket=BUCKET, Key="results/st 1/bin-a.jpg.json")["LastModified"]
    dead = Counter(UrlInvoker("http://127.0.0.1:9"), counter.settings)
    dead.__dict__["metadata"] = counter.metadata
    out = handle(s3_event(s3, "incoming/st 1/bin-a.jpg"), dead, s3, lines.append)
    assert out["photos"][0]["status"] == "duplicate"
    assert s3.head_object(Bucket=BUCKET, Key="results/st 1/bin-a.jpg.json")["LastModified"] == before
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/")["Contents"]]
    assert len(keys) == 3
    # a result written under the results prefix does not count itself
    assert handle(s3_event(s3, keys[0]), dead, s3)["photos"][0]["status"] == "skipped"

    # new bytes under the same key are counted again; a model that is down fails the invocation (Lambda retries)
    s3.put_object(Bucket=BUCKET, Key="incoming/st 1/bin-a.jpg", Body=jpeg(5))
    with pytest.raises(ModelUnavailable):
        handle(s3_event(s3, "incoming/st 1/bin-a.jpg"), dead, s3)
    assert handle(s3_event(s3, "incoming/st 1/bin-a.jpg"), counter, s3)["photos"][0]["status"] == "ok"
    assert result(s3, "results/st 1/bin-a.jpg.json")["source_etag"] != a["source_etag"]


def url_event(body: dict | bytes, method: str = "POST", content_type: str = "application/json", query=None) -> dict:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return {
        "version": "2.0",
        "requestContext": {"http": {"method": method, "path": "/"}},
        "headers": {"content-type": content_type},
        "queryStringParameters": query or {},
        "body": base64.b64encode(raw).decode(),
        "isBase64Encoded": True,
    }


def test_function_url_answers_what_predict_answers(server: ServeProcess, s3) -> None:
    counter = Counter(UrlInvoker(server.url + "/invocations"), settings_for(server.url))
    photo = jpeg(3)
    predict = httpx.post(
        f"{server.url}/predict", files={"files": ("bin-3.jpg", photo, "image/jpeg")}, data={"expected_quantity": "2"}
    )
    assert predict.status_code == 200
    b64 = base64.b64encode(photo).decode()
    answer = handle(url_event({"b64": b64, "expected_quantity": 2, "filename": "bin-3.jpg"}), counter, s3)
    assert answer["statusCode"] == 200
    assert json.loads(answer["body"]) == predict.json()
    raw = handle(
        url_event(photo, content_type="image/jpeg", query={"expected_quantity": "2", "filename": "bin-3.jpg"}),
        counter,
        s3,
    )
    assert json.loads(raw["body"]) == predict.json()

    s3.put_object(Bucket=BUCKET, Key="incoming/bin-3.jpg", Body=photo)
    by_ref = handle(url_event({"s3_uri": f"s3://{BUCKET}/incoming/bin-3.jpg", "expected_quantity": 2}), counter, s3)
    assert by_ref["statusCode"] == 200 and json.loads(by_ref["body"]) == predict.json()

    bad_photo = httpx.post(f"{server.url}/predict", files={"files": ("x.jpg", b"nope", "image/jpeg")})
    corrupt = handle(url_event({"b64": base64.b64encode(b"nope").decode(), "filename": "x.jpg"}), counter, s3)
    assert (corrupt["statusCode"], bad_photo.status_code) == (400, 400)
    assert json.loads(corrupt["body"])["error"].startswith("no photo could be read: x.jpg: ")
    for body, status in (
        ({"b64": b64, "expected_quantity": -1}, 422),
        ({"b64": b64, "s3_uri": "s3://x/y"}, 422),
        ({}, 422),
        ({"s3_uri": f"s3://{BUCKET}/results/secret.json"}, 403),
        ({"s3_uri": "s3://another-bucket/incoming/a.jpg"}, 403),
        ({"s3_uri": f"s3://{BUCKET}/incoming/missing.jpg"}, 404),
    ):
        answer = handle(url_event(body), counter, s3)
        assert answer["statusCode"] == status, (body, answer)
        assert set(json.loads(answer["body"])) == {"error"}
    assert handle(url_event({}, method="GET"), counter, s3)["statusCode"] == 405
    big = settings_for(server.url, max_payload_mb=0.001)
    assert handle(url_event({"b64": b64}), Counter(counter.invoker, big), s3)["statusCode"] == 413


def test_settings_from_the_environment() -> None:
    env = {
        "BINSIGHT_LAMBDA_ENDPOINT_NAME": "binsight",
        "BINSIGHT_LAMBDA_BUCKET": BUCKET,
        "BINSIGHT_LAMBDA_INPUT_PREFIX": "in/",
        "BINSIGHT_LAMBDA_RESULTS_PREFIX": "out/",
        "BINSIGHT_LAMBDA_MANUAL_CHECK_CONFIDENCE": "0.3",
    }
    settings = load_settings(env)
    assert (settings.endpoint_name, settings.manual_check_confidence) == ("binsight", 0.3)
    with pytest.raises(SettingsError, match="exactly one of"):
        load_settings({**env, "BINSIGHT_LAMBDA_INVOCATIONS_URL": "http://x"})
    with pytest.raises(SettingsError, match="must not contain one another"):
        load_settings({**env, "BINSIGHT_LAMBDA_RESULTS_PREFIX": "in/results/"})


def test_handler_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import fails
        "import binsight_aws.lambda_fn.handler\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'PIL', 'fastapi', 'service'))\n"
        "assert loaded == ['service', 'service.manual_check', 'service.model_metadata', 'service.options', "
        "'service.schemas', 'torch'], loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=Path(ROOT), check=True)


def test_handler_entry_point_from_its_environment(server: ServeProcess, s3, moto_endpoint, monkeypatch) -> None:  # noqa: F811
    from binsight_aws.lambda_fn import handler as entry

    for name, value in {
        "BINSIGHT_LAMBDA_INVOCATIONS_URL": server.url,
        "BINSIGHT_LAMBDA_BUCKET": BUCKET,
        "BINSIGHT_LAMBDA_INPUT_PREFIX": "incoming/",
        "BINSIGHT_LAMBDA_RESULTS_PREFIX": "results/",
        "AWS_ENDPOINT_URL_S3": moto_endpoint,  # the function's own boto3 client, pointed at moto
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(entry, "_STATE", {})
    s3.put_object(Bucket=BUCKET, Key="incoming/bin-9_qty-4.jpg", Body=jpeg(9))
    out = entry.handler(s3_event(s3, "incoming/bin-9_qty-4.jpg"))
    assert out["photos"][0]["status"] == "ok"
    assert result(s3, "results/bin-9_qty-4.jpg.json")["results"][0]["expected_quantity"] == 4
    assert entry.handler(s3_event(s3, "incoming/bin-9_qty-4.jpg"))["photos"][0]["status"] == "duplicate"


def test_sagemaker_invoker_sorts_refusals_from_outages(tmp_path: Path) -> None:
    import boto3
    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    from binsight_aws.lambda_fn.invokers import PhotoRejected, SageMakerInvoker

    model_json = make_artifact(tmp_path / "model") / "model.json"
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1")
    invoker = SageMakerInvoker("bs-sls", runtime, model_json)
    answer = json.dumps(
        {
            "predictions": [
                {"count": 2, "label": "2", "confidence": 0.6, "probabilities": {"2": 0.6}, "expected_count": 2.1}
            ]
        }
    ).encode()
    request = {
        "EndpointName": "bs-sls",
        "Body": b"photo",
        "ContentType": "application/x-image",
        "Accept": "application/json",
    }
    with Stubber(runtime) as stub:
        stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(answer), len(answer))}, request)
        stub.add_client_error(
            "invoke_endpoint",
            service_error_code="ModelError",
            service_message="Received client error (400) from primary",
            http_status_code=424,
            modeled_fields={"OriginalStatusCode": 400, "OriginalMessage": '{"error": "image data is corrupt"}'},
        )
        stub.add_client_error("invoke_endpoint", service_error_code="ThrottlingException", http_status_code=400)
        stub.add_client_error(
            "invoke_endpoint",
            service_error_code="ModelError",
            http_status_code=424,
            modeled_fields={"OriginalStatusCode": 503, "OriginalMessage": '{"error": "model loading"}'},
        )
        assert invoker.predict(b"photo").count == 2
        with pytest.raises(PhotoRejected, match="image data is corrupt"):
            invoker.predict(b"photo")
        with pytest.raises(ModelUnavailable, match="ThrottlingException"):
            invoker.predict(b"photo")
        with pytest.raises(ModelUnavailable):
            invoker.predict(b"photo")
    assert invoker.metadata().labels == json.loads(model_json.read_text())["labels"]
