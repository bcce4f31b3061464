"""The page for people at ``/``: drop or pick bin photos, optionally type the expected quantity, see the counts.

The page is three static files in ``service/static/ui`` (package data, so the serving image and a wheel
carry them): plain HTML, CSS and JavaScript, no build step and no CDN. It calls ``POST /predict`` with
``fetch`` and ``FormData`` and ``GET /ping`` to say while the model loads. Its Content-Security-Policy
lets it load and fetch from this server only (thumbnails are ``blob:`` URLs of the chosen files).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

UI_ASSETS_PATH = "/ui"
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)


def page_html() -> str:
    return (files("service") / "static" / "ui" / "index.html").read_text(encoding="utf-8")


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its script and style sheet under ``/ui``."""
    app.mount(UI_ASSETS_PATH, StaticFiles(packages=[("service", "static/ui")]), name="ui-assets")
    html = page_html()  # read once: the file does not change while the server runs

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})
