"""FastAPI application factory.

``create_app(settings)`` loads the model in the background when the server starts, so ``/ping``
answers at once (503 until the model is loaded and warmed up). Tests pass a ready ``predictor``
or their own ``loader``. ``create_app_from_env`` is the factory uvicorn imports in each worker
process when ``serve`` runs more than one worker.

Importing this module loads no model and imports neither torchvision nor training code.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import docs_ui, openapi_schema, ui
from service.body_limit import BodySizeLimit
from service.codecs import CodecError
from service.drain import CloseWhileDraining
from service.engine import InferenceError
from service.model_state import Loader, ModelState, load_in_background, load_predictor, new_engine
from service.predictor import Predictor
from service.routes import ROUTERS
from service.settings import ServeSettings

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Counts the objects in warehouse bin photos.

* **POST /predict**: upload one or more photos here (*Try it out*), optionally with the quantity the bin
  should hold; each photo gets a count, the probability of the expected quantity and a manual-check flag.
* **POST /invocations**: SageMaker's inference route: one raw image (JPEG, PNG, WebP, HEIC, ...; an
  `application/octet-stream` body is read from its bytes), or base64 images as JSON
  `{"instances": [{"b64": ...}]}` or JSON Lines; `Accept: application/jsonlines` for line output.
* **GET /execution-parameters**: what SageMaker batch transform should use (measured on the first call).
* **GET /ping**: 200 once the model is loaded and answered a warm-up inference, else 503.
* **GET /model**: the served model's metadata (model.json).
"""


def create_app(
    settings: ServeSettings,
    predictor: Predictor | None = None,
    *,
    loader: Loader | None = None,
    settle_heap: bool = False,
) -> FastAPI:
    """The app; with ``predictor`` it serves that one at once, else ``loader`` (default: the
    configured artifact) runs in the background at startup. ``settle_heap``: the ``serve`` process
    freezes what loading leaves alive (:func:`service.model_state.settle_heap`); tests leave it off."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state: ModelState = app.state.model
        loading: asyncio.Task | None = None
        if predictor is not None:
            engine = new_engine(predictor, settings)
            await engine.start()
            state.set_ready(predictor, engine)
        else:
            loading = asyncio.create_task(load_in_background(state, settings, loader or load_predictor, settle_heap))
        try:
            yield
        finally:
            if loading is not None and not loading.done():
                loading.cancel()  # the loader thread is a daemon: it does not hold up the exit
                with suppress(asyncio.CancelledError):
                    await loading
            if state.engine is not None:
                await state.engine.close()

    # docs_url/redoc_url off: docs_ui serves both pages from local assets instead of FastAPI's CDN ones
    app = FastAPI(
        title="binsight", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    app.state.model = ModelState()
    for router in ROUTERS:
        app.include_router(router)
    openapi_schema.install(app)
    docs_ui.install(app, app.title)
    ui.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_payload_bytes)
    app.add_middleware(CloseWhileDraining)  # outermost: the 413 of BodySizeLimit gets it too
    _add_error_handlers(app)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory service.app:create_app_from_env`` (one call per worker process)."""
    return create_app(ServeSettings.from_env(), settle_heap=True)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"error": "..."}``; bad input never becomes a 500."""

    @app.exception_handler(CodecError)
    async def codec_error(request: Request, exc: CodecError) -> JSONResponse:
        return _error(exc.status_code, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e.get('loc', ()) if part != 'body') or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return _error(422, f"invalid request: {problems}")

    @app.exception_handler(InferenceError)
    async def inference_error(request: Request, exc: InferenceError) -> JSONResponse:
        return _error(500, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error: method: %s path: %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")
