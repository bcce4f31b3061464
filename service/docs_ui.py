"""Swagger UI at ``/docs`` and ReDoc at ``/redoc``, served from the app itself: no request leaves the host.

FastAPI's own docs pages load Swagger UI and ReDoc from a CDN (and the favicon from fastapi's site), so
they are blank on machines that cannot reach it (warehouse networks, VPC-only hosts, air-gapped sites).
The assets here come from the ``fastapi-offline`` package (PyPI, MIT): one 0.8 MB wheel, depending only
on fastapi, that ships Swagger UI 5.x (OpenAPI 3.1-capable; 5.32.6 in 1.7.7) and ReDoc 2.x (2.5.3) and
follows their releases. The alternatives ship less or bring more: ``swagger-ui-bundle`` 1.1.0 holds
Swagger UI 4.15 (no OpenAPI 3.1) and no ReDoc; ``drf-spectacular-sidecar`` holds both but requires Django.
Only its static files are used (not its ``FastAPIOffline`` factory): the pages are ours, start Swagger
UI from a script file (``service/static/docs``) rather than an inline script, and carry a
Content-Security-Policy that lets the browser fetch from this server only.
"""

from __future__ import annotations

from html import escape

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs/assets"
ASSET_PACKAGES = [("service", "static/docs"), ("fastapi_offline", "static")]

# Swagger UI sets element styles and ReDoc injects <style> elements (styled-components), hence
# 'unsafe-inline' for styles; ReDoc's search runs in a worker made from a blob: URL. Scripts and every
# fetch (the OpenAPI document, "Try it out" requests) are allowed from this server only.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "worker-src 'self' blob:; font-src 'self' data:; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'self'"
)


def install(app: FastAPI, title: str) -> None:
    """Add ``/docs``, ``/redoc`` and their assets to ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_PATH, StaticFiles(packages=ASSET_PACKAGES), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return _page(swagger_ui_html(title, request.scope.get("root_path", ""), app.openapi_url or ""))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return _page(redoc_html(title, request.scope.get("root_path", ""), app.openapi_url or ""))


def _page(html: str) -> HTMLResponse:
    return HTMLResponse(html, headers={"Content-Security-Policy": DOCS_CSP, "X-Content-Type-Options": "nosniff"})


def swagger_ui_html(title: str, root_path: str, openapi_url: str) -> str:
    assets = escape(root_path + ASSETS_PATH)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} - Swagger UI</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" href="{assets}/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js" data-openapi-url="{escape(root_path + openapi_url)}"></script>
</body>
</html>
"""


def redoc_html(title: str, root_path: str, openapi_url: str) -> str:
    assets = escape(root_path + ASSETS_PATH)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} - ReDoc</title>
<link rel="icon" href="{assets}/favicon.png">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<redoc spec-url="{escape(root_path + openapi_url)}"></redoc>
<script src="{assets}/redoc.standalone.js"></script>
</body>
</html>
"""
