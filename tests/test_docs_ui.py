"""/docs, /redoc and the page for people, in process (no browser): local assets only, the OpenAPI fixes
Swagger UI needs for file uploads, documented error examples equal to what the server sends, and the
static files packaged. tests/test_browser.py uses the same pages in a real browser."""

from __future__ import annotations

import re
import threading
import tomllib
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.artifact import metadata_for
from service.docs_ui import DOCS_CSP
from service.manual_check import thresholds
from service.openapi_schema import mark_binary_uploads
from service.predictor import Predictor
from service.settings import ModelLocation, ServeSettings
from service.ui import PAGE_CSP

from serving_support import ARCH, LABELS, ROOT, FixedLogits, client_for, jpeg, wait_settled

ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fixed_predictor() -> Predictor:
    return Predictor(FixedLogits([0, 0, 1, 4, 1, 0, 0]), metadata_for(ARCH, LABELS, input_size=32))


def default_settings(model_dir: Path | None = None) -> ServeSettings:
    """The serving defaults (6 MiB body limit), as the documented examples assume."""
    location = ModelLocation(path=model_dir, source="MODEL_DIR") if model_dir else ModelLocation(path=None, tried=())
    return ServeSettings(model=location)


@pytest.fixture
async def client():
    async with client_for(create_app(default_settings(), fixed_predictor())) as client:
        yield client


@pytest.fixture(scope="module")
def openapi() -> dict:
    return create_app(default_settings(), fixed_predictor()).openapi()


def local_references(html: str) -> list[str]:
    return re.findall(r'(?:src|href|spec-url|data-openapi-url)="([^"]+)"', html)


# ------------------------------------------------------------------------------- /docs and /redoc


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_pages_load_everything_from_the_server(client, path: str) -> None:
    page = await client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == DOCS_CSP
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text
    references = local_references(page.text)
    assert references and all(ref.startswith("/") for ref in references), references
    for ref in references:
        asset = await client.get(ref)
        assert asset.status_code == 200, ref
        suffix = Path(ref).suffix
        if suffix in ASSET_TYPES:
            assert ASSET_TYPES[suffix] in asset.headers["content-type"], ref
    assert "fonts.googleapis" not in page.text


@pytest.mark.anyio
async def test_docs_follow_the_root_path_behind_a_proxy() -> None:
    app = create_app(default_settings(), fixed_predictor())
    transport = httpx.ASGITransport(app=app, root_path="/binsight")
    async with httpx.AsyncClient(transport=transport, base_url="http://binsight.test") as client:
        html = (await client.get("/docs")).text
    assert 'src="/binsight/docs/assets/swagger-ui-bundle.js"' in html
    assert 'data-openapi-url="/binsight/openapi.json"' in html


@pytest.mark.anyio
async def test_swagger_ui_is_version_5_and_reads_openapi_3_1(client) -> None:
    bundle = (await client.get("/docs/assets/swagger-ui-bundle.js")).text
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.(\d+)\.(\d+)"', bundle)
    assert version and int(version.group(1)) >= 5, "Swagger UI 5 reads OpenAPI 3.1"
    init = (await client.get("/docs/assets/swagger-init.js")).text
    assert "validatorUrl: null" in init  # else Swagger UI fetches a badge from validator.swagger.io
    assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.1")
    redoc = (await client.get("/docs/assets/redoc.standalone.js")).text
    assert re.search(r'ReDoc Version: ","2\.\d+\.\d+"', redoc)


# ------------------------------------------------------------------------------- the OpenAPI fixes


def test_predict_photos_are_binary_array_items(openapi: dict) -> None:
    body = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = openapi["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    files = form["properties"]["files"]
    assert files["type"] == "array"
    assert files["items"] == {"type": "string", "contentMediaType": "application/octet-stream", "format": "binary"}
    assert form["required"] == ["files"]
    quantity = form["properties"]["expected_quantity"]
    assert "default" not in quantity and "examples" not in quantity  # nothing for Swagger UI to pre-fill


def test_invocations_take_a_raw_image_body(openapi: dict) -> None:
    content = openapi["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert list(content)[0] == "image/jpeg"  # the one Swagger UI picks first: a file picker
    for media_type in ("image/jpeg", "image/png", "application/x-image"):
        assert content[media_type]["schema"] == {"type": "string", "format": "binary"}


def test_mark_binary_uploads_finds_every_file_field() -> None:
    upload = {"type": "string", "contentMediaType": "application/octet-stream"}
    document = {
        "paths": {
            "/a": {
                "post": {
                    "requestBody": {
                        "content": {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/Form"}}}
                    }
                }
            },
            "/b": {"get": {"responses": {"200": {"content": {"application/json": {"schema": dict(upload)}}}}}},
        },
        "components": {
            "schemas": {
                "Form": {
                    "type": "object",
                    "properties": {
                        "one": dict(upload),
                        "maybe": {"anyOf": [dict(upload), {"type": "null"}]},
                        "many": {"type": "array", "items": dict(upload)},
                        "name": {"type": "string"},
                    },
                }
            }
        },
    }
    assert mark_binary_uploads(document) == 3
    props = document["components"]["schemas"]["Form"]["properties"]
    assert (
        props["one"]["format"] == props["maybe"]["anyOf"][0]["format"] == props["many"]["items"]["format"] == "binary"
    )
    assert "format" not in props["name"]
    assert "format" not in document["paths"]["/b"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert mark_binary_uploads(document) == 0  # already marked


def test_every_error_is_documented_with_the_schema_it_has(openapi: dict) -> None:
    assert "HTTPValidationError" not in openapi["components"]["schemas"]  # errors are {"error": ...}, 422 too
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                schema = response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                assert schema == ("PingResponse" if path == "/ping" else "ErrorResponse"), (path, status)
                assert response["content"]["application/json"]["examples"], (path, status)


# ------------------------------------------------------------------------------- documented examples

BIG = b"\xff\xd8" + b"0" * (7 * 2**20)
# (path, status, example name) -> the request that example describes
EXAMPLE_REQUESTS = {
    ("/predict", "400", "unreadable"): dict(files=[("files", ("notes.txt", b"shopping list", "text/plain"))]),
    ("/predict", "413", "too_large"): dict(files=[("files", ("big.jpg", BIG, "image/jpeg"))]),
    ("/predict", "422", "no_files"): dict(data={"expected_quantity": "3"}),
    ("/predict", "422", "bad_quantity"): dict(
        files=[("files", ("a.jpg", jpeg(), "image/jpeg"))], data={"expected_quantity": "three"}
    ),
    ("/invocations", "400", "not_an_image"): dict(content=b"hello", headers={"content-type": "image/jpeg"}),
    ("/invocations", "400", "truncated"): dict(
        content=jpeg(size=(320, 240))[:1500], headers={"content-type": "image/jpeg"}
    ),
    ("/invocations", "400", "bad_json"): dict(content=b"{bad", headers={"content-type": "application/json"}),
    ("/invocations", "400", "bad_base64"): dict(
        content=b'{"instances": [{"b64": "!!!"}]}', headers={"content-type": "application/json"}
    ),
    ("/invocations", "406", "not_acceptable"): dict(
        content=jpeg(), headers={"content-type": "image/jpeg", "accept": "text/csv"}
    ),
    ("/invocations", "413", "too_large"): dict(content=BIG, headers={"content-type": "image/jpeg"}),
    ("/invocations", "415", "unsupported"): dict(content=b"hello", headers={"content-type": "text/plain"}),
}
NOT_READY_PATHS = {
    "/ping": "get",
    "/invocations": "post",
    "/predict": "post",
    "/model": "get",
    "/execution-parameters": "get",
}


def documented_examples(openapi: dict) -> dict[tuple[str, str, str], dict]:
    return {
        (path, status, name): example["value"]
        for path, operations in openapi["paths"].items()
        for operation in operations.values()
        for status, response in operation["responses"].items()
        if int(status) >= 400
        for name, example in response["content"]["application/json"]["examples"].items()
    }


def test_every_documented_example_is_checked(openapi: dict) -> None:
    checked = (
        set(EXAMPLE_REQUESTS)
        | {(path, "503", state) for path in NOT_READY_PATHS for state in ("loading", "failed")}
        | {("/ping", "503", "draining")}
    )  # checked in test_serving_drain.py
    assert set(documented_examples(openapi)) == checked


@pytest.mark.anyio
async def test_documented_error_examples_are_what_the_server_sends(client, openapi: dict) -> None:
    examples = documented_examples(openapi)
    for (path, status, name), request in EXAMPLE_REQUESTS.items():
        response = await client.post(path, **request)
        assert (response.status_code, response.json()) == (int(status), examples[path, status, name]), name


def _numbers_hidden(body: dict) -> dict:
    return {k: re.sub(r"\d+(\.\d+)?", "N", v) if isinstance(v, str) else v for k, v in body.items()}


@pytest.mark.anyio
async def test_documented_not_ready_examples_are_what_the_server_sends(openapi: dict, tmp_path: Path) -> None:
    examples = documented_examples(openapi)
    release = threading.Event()

    def blocked(_: ServeSettings) -> Predictor:
        release.wait(30)
        return fixed_predictor()

    upload = {"files": [("files", ("a.jpg", jpeg(), "image/jpeg"))]}
    raw = {"content": jpeg(), "headers": {"content-type": "image/jpeg"}}
    empty_model_dir = tmp_path / "model"
    empty_model_dir.mkdir()
    for state, app in (
        ("loading", create_app(default_settings(), loader=blocked)),
        ("failed", create_app(default_settings(empty_model_dir))),
    ):
        async with client_for(app) as client:
            if state == "failed":
                assert (await wait_settled(client, timeout=30)).json()["status"] == "failed"
            for path, method in NOT_READY_PATHS.items():
                kwargs = upload if path == "/predict" else raw if path == "/invocations" else {}
                response = await client.request(method.upper(), path, **kwargs)
                body = response.json()
                if state == "failed":
                    body = {
                        k: v.replace(str(empty_model_dir), "/opt/ml/model") if isinstance(v, str) else v
                        for k, v in body.items()
                    }
                assert response.status_code == 503, (state, path)
                assert _numbers_hidden(body) == _numbers_hidden(examples[path, "503", state]), (state, path)
        release.set()


# ------------------------------------------------------------------------------- the page for people


@pytest.mark.anyio
async def test_page_is_served_at_the_root_with_its_assets(client) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == PAGE_CSP
    assert "connect-src 'self'" in PAGE_CSP and "script-src 'self'" in PAGE_CSP
    assert 'name="viewport"' in page.text and "http://" not in page.text and "https://" not in page.text
    references = [ref for ref in local_references(page.text) if not ref.startswith("data:")]
    assert set(references) == {"ui/style.css", "ui/app.js", "docs"}
    script = await client.get("/ui/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert '"predict"' in script.text and "FormData" in script.text and "innerHTML" not in script.text
    style = await client.get("/ui/style.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert "url(" not in style.text and "@import" not in style.text


def test_static_files_are_package_data_and_their_package_a_dependency() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["service"]
    packaged = {path for pattern in patterns for path in (ROOT / "service").glob(pattern) if path.is_file()}
    static = {
        path for path in (ROOT / "service" / "static").rglob("*") if path.is_file() and "__pycache__" not in path.parts
    }
    assert static and static <= packaged, sorted(str(p) for p in static - packaged)
    assert any(re.match(r"fastapi-offline\b", dep) for dep in pyproject["project"]["dependencies"])


# ------------------------------------------------------------------------------- documented answers


def test_documented_answers_add_up(openapi: dict) -> None:
    """The example answers obey the rules real answers do (probabilities sum to 1, the count is the most
    probable label, expected_count is the mean, the flag follows the default thresholds)."""
    schemas = openapi["components"]["schemas"]
    photo = schemas["PhotoResult"]["examples"][0]
    prediction = {name: prop["examples"][0] for name, prop in schemas["PredictionOut"]["properties"].items()}
    invocation = schemas["InvocationResponse"]["examples"][0]["predictions"][0]
    for answer in (photo, prediction, invocation):
        probabilities = answer["probabilities"]
        assert sum(probabilities.values()) == pytest.approx(1.0)
        assert answer["label"] == max(probabilities, key=probabilities.get) and answer["count"] == int(answer["label"])
        assert answer["confidence"] == probabilities[answer["label"]]
        mean = sum(int(label.rstrip("+")) * p for label, p in probabilities.items())
        assert answer["expected_count"] == pytest.approx(mean, abs=0.005)
    defaults = default_settings()
    assert photo["probability_expected"] == photo["probabilities"][str(photo["expected_quantity"])]
    assert photo["matches_expected"] == (photo["label"] == str(photo["expected_quantity"]))
    min_confidence, min_probability = thresholds(
        defaults.manual_check_confidence, defaults.manual_check_expected_probability, {}
    )
    low_confidence = photo["confidence"] < min_confidence
    unlikely_quantity = photo["probability_expected"] < min_probability
    assert photo["needs_manual_check"] == (low_confidence or unlikely_quantity)
