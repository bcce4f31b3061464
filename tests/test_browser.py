"""The docs and the page for people, used in a real browser (Debian's chromium through Playwright) against
a real uvicorn server on a loopback port, with every request that would leave the host blocked.

The model is a stand-in whose answer follows the photo's brightness (``browser_support.BrightnessCounter``),
so each photo's count is known, and the photos are JPEGs the tests draw with PIL.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.predictor import Predictor
from service.settings import ModelLocation, ServeSettings

from browser_support import (
    Browser,
    ServerThread,
    bin_photo,
    brightness_predictor,
    csp_violations,
    launch_browser,
    require_chromium,
    save_screenshot,
)

pytestmark = pytest.mark.browser

PREDICT = "#operations-inference-predict_predict_post"
INVOCATIONS = "#operations-inference-invoke_invocations_post"
TIMEOUT_MS = 20_000


def settings() -> ServeSettings:
    return ServeSettings(model=ModelLocation(path=None, tried=("test",)), batch_wait_ms=0)


@pytest.fixture(scope="module")
def browser():
    launched = launch_browser(require_chromium())
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return brightness_predictor()


@pytest.fixture(scope="module")
def server(predictor: Predictor):
    with ServerThread(create_app(settings(), predictor)) as running:
        yield running


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    files = {
        "bin-three.jpg": bin_photo(3),
        "bin-five.jpg": bin_photo(5),
        "bin-unsure.jpg": bin_photo(2.5),
        "notes.txt": b"shopping list: tape, boxes",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


# ReDoc's sidebar shows "API docs by Redocly" with a logo from Redocly's CDN, with no option to leave it
# out; the /redoc page's Content-Security-Policy refuses it (ReDoc then hides the image), so the request
# never leaves the host. Nothing else may be refused.
EXPECTED_CSP_VIOLATIONS = {"img-src https://cdn.redoc.ly/redoc/logo-mini.svg"}


@pytest.fixture
def page(browser: Browser):
    """A page whose requests are all checked: none may leave the host, none but the one above may be
    refused by the CSP, and the page's scripts may log no error."""
    opened = browser.page()
    before = len(browser.network.blocked)
    yield opened
    try:
        violations = csp_violations(opened)
    finally:
        opened.close()
    assert browser.network.blocked[before:] == [], "requests that would have left the host"
    assert set(violations) <= EXPECTED_CSP_VIOLATIONS, "requests refused by the Content-Security-Policy"
    # chromium also logs each CSP refusal (checked above) and each HTTP error answer (some tests ask for them)
    errors = [
        e
        for e in opened.console_errors
        if "violates the following Content Security Policy" not in e
        and not e.startswith("Failed to load resource: the server responded with a status of")
    ]
    assert errors == [], "errors in the browser console"


def api_predict(url: str, paths: list[Path], expected: int | None = None) -> dict:
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    data = {"expected_quantity": str(expected)} if expected is not None else {}
    response = httpx.post(f"{url}/predict", files=files, data=data, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------------- Swagger UI


def open_operation(page, url: str, operation: str):
    page.goto(f"{url}/docs")
    block = page.locator(operation)
    block.locator(".opblock-summary").click()
    block.get_by_role("button", name="Try it out").click()
    return block


def response_body(block) -> dict:
    code = block.locator(".live-responses-table tr.response .response-col_status").first
    code.wait_for(timeout=TIMEOUT_MS)
    text = block.locator(".live-responses-table tr.response .response-col_description .microlight").first.inner_text()
    return {"status": int(code.inner_text().strip()), "body": json.loads(text)}


def test_swagger_ui_uploads_photos_to_predict(page, server: ServerThread, photos, tmp_path: Path) -> None:
    block = open_operation(page, server.url, PREDICT)
    quantity = block.locator("tr[data-property-name=expected_quantity] input[type=text]")
    assert quantity.input_value() == ""  # no made-up value that would flag every photo
    pickers = block.locator("tr[data-property-name=files] input[type=file]")
    pickers.first.set_input_files(photos["bin-three.jpg"])
    block.get_by_role("button", name="Execute").click()
    answer = response_body(block)
    assert answer["status"] == 200
    (photo,) = answer["body"]["results"]
    assert (photo["filename"], photo["count"], photo["needs_manual_check"]) == ("bin-three.jpg", 3, False)

    # a second photo and an expected quantity: per-photo answers, the flag where the count differs
    block.get_by_role("button", name=re.compile("Add .*item")).click()
    pickers.nth(1).set_input_files(photos["bin-five.jpg"])
    quantity.fill("3")
    block.get_by_role("button", name="Execute").click()
    page.wait_for_function(
        "s => document.querySelector(s + ' .live-responses-table .microlight')?.textContent.includes('bin-five')",
        arg=PREDICT,
        timeout=TIMEOUT_MS,
    )
    three, five = response_body(block)["body"]["results"]
    assert (three["count"], three["needs_manual_check"], three["matches_expected"]) == (3, False, True)
    assert (five["filename"], five["count"], five["needs_manual_check"]) == ("bin-five.jpg", 5, True)
    assert "probability of expected quantity 3" in five["manual_check_reasons"][0]
    # the README's picture: the form with both photos picked, down to the server's answer
    top, bottom = block.evaluate("""b => [b.getBoundingClientRect().top + window.scrollY,
        b.querySelector('.live-responses-table').getBoundingClientRect().bottom + window.scrollY]""")
    save_screenshot(
        page.screenshot(full_page=True, clip={"x": 0, "y": top, "width": 1280, "height": bottom - top}),
        "docs.png",
        tmp_path,
    )


def test_swagger_ui_sends_a_raw_image_to_invocations(page, server: ServerThread, photos) -> None:
    block = open_operation(page, server.url, INVOCATIONS)
    assert block.locator(".body-param-content-type select").input_value() == "image/jpeg"
    block.locator(".opblock-body input[type=file]").set_input_files(photos["bin-five.jpg"])
    block.get_by_role("button", name="Execute").click()
    answer = response_body(block)
    assert answer["status"] == 200
    (prediction,) = answer["body"]["predictions"]
    assert prediction["count"] == 5 and prediction["label"] == "5"


def test_swagger_ui_and_redoc_load_only_from_the_server(page, browser: Browser, server: ServerThread) -> None:
    before = len(browser.network.requested)
    page.goto(f"{server.url}/docs")
    page.locator(PREDICT).wait_for(timeout=TIMEOUT_MS)
    page.goto(f"{server.url}/redoc")
    page.get_by_role("heading", name="Upload bin photos, optionally check an expected quantity").wait_for(
        timeout=TIMEOUT_MS
    )
    assert csp_violations(page) == ["img-src https://cdn.redoc.ly/redoc/logo-mini.svg"]  # refused, see above
    requested = browser.network.requested[before:]
    assert {
        f"{server.url}/docs/assets/swagger-ui-bundle.js",
        f"{server.url}/docs/assets/redoc.standalone.js",
        f"{server.url}/openapi.json",
    } <= set(requested)
    assert all(url.startswith(server.url) for url in requested), requested


# ------------------------------------------------------------------------------- the page


def wait_for_results(page, count: int) -> list:
    page.locator("#results article.result").nth(count - 1).wait_for(timeout=TIMEOUT_MS)
    return page.locator("#results article.result").all()


def card_text(card) -> dict:
    return {
        "filename": card.locator(".filename").inner_text(),
        "count": card.locator(".count").inner_text(),
        "flag": card.locator(".flag-title").inner_text(),
        "reasons": [li.inner_text() for li in card.locator(".reasons li").all()],
    }


def test_page_counts_several_photos_and_flags_them(page, server: ServerThread, photos, tmp_path: Path) -> None:
    names = ["bin-three.jpg", "bin-five.jpg", "bin-unsure.jpg", "notes.txt"]
    page.set_viewport_size({"width": 1000, "height": 900})
    page.goto(server.url + "/")
    page.get_by_text("The model is ready.").wait_for(timeout=TIMEOUT_MS)
    page.set_input_files("#photos", [photos[n] for n in names])
    assert "4 photos chosen" in page.inner_text("#chosen")
    page.fill("#expected-quantity", "3")
    page.click("#count-button")
    cards = wait_for_results(page, 4)
    api = api_predict(server.url, [photos[n] for n in names], expected=3)["results"]

    shown = [card_text(card) for card in cards]
    assert [s["filename"] for s in shown] == names
    assert [s["count"] for s in shown[:2]] == ["3 objects", "5 objects"]
    assert shown[0]["flag"] == "No manual check needed" and shown[0]["reasons"] == []
    for card, result in zip(shown[1:], api[1:]):
        assert card["flag"] == "Check by hand"
        assert card["reasons"] == result["manual_check_reasons"] and card["reasons"]
    assert shown[3]["count"] == "This file could not be read as a photo."
    assert "not a recognised image format" in cards[3].locator(".error").inner_text()

    # confidence and one bar per class, the predicted one marked, each with its probability as text
    first = cards[0]
    assert first.locator(".confidence").inner_text() == f"Confidence {api[0]['confidence'] * 100:.0f}%"
    assert first.locator(".expected").inner_text().startswith("Expected 3: probability")
    rows = first.locator(".probabilities tbody tr")
    assert rows.count() == 7
    assert first.locator(".probabilities tr.predicted th").inner_text() == "3"
    widths = first.locator(".probabilities .bar").evaluate_all("bars => bars.map(b => b.style.width)")
    assert widths[3] == f"{api[0]['probabilities']['3'] * 100:.1f}%"
    assert first.locator("img").evaluate("img => img.complete && img.naturalWidth") == 480
    assert page.inner_text(".summary") == "4 photos, 3 to check by hand."
    save_screenshot(page.screenshot(full_page=True), "page.png", tmp_path)


def test_page_takes_dropped_photos(page, server: ServerThread, photos) -> None:
    page.goto(server.url + "/")
    data = list(photos["bin-five.jpg"].read_bytes())
    page.evaluate(
        """(bytes) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"}));
        const zone = document.getElementById("drop-zone");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""",
        data,
    )
    assert page.inner_text("#chosen") == "1 photo chosen: dropped.jpg"
    page.click("#count-button")
    (card,) = wait_for_results(page, 1)
    assert card_text(card) == {
        "filename": "dropped.jpg",
        "count": "5 objects",
        "flag": "No manual check needed",
        "reasons": [],
    }


def test_page_with_the_keyboard_on_a_phone_screen(page, server: ServerThread, photos) -> None:
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(server.url + "/")
    focused = []
    for _ in range(6):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert focused[:4] == ["A", "photos", "expected-quantity", "count-button"], focused
    page.set_input_files("#photos", [photos["bin-three.jpg"], photos["bin-five.jpg"]])
    page.focus("#expected-quantity")
    page.keyboard.type("5")
    page.keyboard.press("Enter")  # submits the form
    three, five = wait_for_results(page, 2)
    assert card_text(three)["flag"] == "Check by hand" and card_text(five)["flag"] == "No manual check needed"
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"


def test_page_explains_bad_input(page, server: ServerThread, photos) -> None:
    page.goto(server.url + "/")
    page.click("#count-button")
    assert page.inner_text("#message") == "Choose or drop at least one photo first."
    page.set_input_files("#photos", [photos["notes.txt"]])
    page.click("#count-button")
    page.get_by_text("None of the files could be read as a photo.").wait_for(timeout=TIMEOUT_MS)
    assert "notes.txt: not a recognised image format" in page.inner_text("#message")
    assert page.locator("#results article").count() == 0


def test_page_while_the_model_loads(page, predictor: Predictor, photos) -> None:
    release = threading.Event()

    def blocked_loader(_: ServeSettings) -> Predictor:
        release.wait(60)
        return predictor

    with ServerThread(create_app(settings(), loader=blocked_loader)) as loading:
        try:
            page.goto(loading.url + "/")
            page.get_by_text("The model is loading; counting works once it is ready.").wait_for(timeout=TIMEOUT_MS)
            page.set_input_files("#photos", [photos["bin-three.jpg"]])
            page.click("#count-button")
            page.get_by_text("The model is not ready yet; try again in a moment.").wait_for(timeout=TIMEOUT_MS)
            assert "model is loading" in page.inner_text("#message")
            release.set()
            page.get_by_text("The model is ready.").wait_for(timeout=TIMEOUT_MS)  # the page polls /ping
            page.click("#count-button")
            (card,) = wait_for_results(page, 1)
            assert card_text(card)["count"] == "3 objects"
            assert page.locator("#message").is_hidden()
        finally:
            release.set()
