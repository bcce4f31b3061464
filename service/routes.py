"""HTTP routes: health and SageMaker's contract (/ping, /invocations), photo upload (/predict), /model."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from service import codecs
from service.drain import drain_of
from service.engine import InferenceEngine
from service.error_docs import INVOCATIONS_ERRORS, NOT_READY, PING_NOT_READY, PREDICT_ERRORS
from service.execution_parameters import ExecutionParameters, ExecutionParametersOut
from service.manual_check import assess, thresholds, unreadable
from service.model_state import ModelState
from service.predictor import ImageFailure, PredictionResult
from service.schemas import InvocationResponse, ModelInfo, PingResponse, PredictResponse
from service.settings import ServeSettings

# ------------------------------------------------------------------------------- dependencies


# The dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies on its
# thread pool, a thread hop per dependency per request.


async def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


async def get_model_state(request: Request) -> ModelState:
    return request.app.state.model


async def get_engine(state: Annotated[ModelState, Depends(get_model_state)]) -> InferenceEngine:
    """The ready inference engine, or 503 while the model loads or after it failed to load."""
    if state.status != "ready" or state.engine is None:
        raise HTTPException(503, detail=state.describe())
    return state.engine


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
StateDep = Annotated[ModelState, Depends(get_model_state)]
EngineDep = Annotated[InferenceEngine, Depends(get_engine)]

_NOT_READY = {503: NOT_READY}

# ------------------------------------------------------------------------------- health

health = APIRouter(tags=["health"])


@health.get("/ping", response_model=PingResponse, responses={503: PING_NOT_READY}, summary="Health check (SageMaker)")
async def ping(request: Request, state: StateDep) -> JSONResponse:
    """200 only when the model is loaded **and** a warm-up inference succeeded; 503 while loading, after
    a load failure, or while the server drains after SIGTERM (`draining`), with the reason in `detail`."""
    drain = drain_of(request.scope)
    if drain is not None and drain.draining:
        body = PingResponse(status="draining", detail=drain.describe())
    else:
        body = PingResponse(status=state.status, detail=None if state.status == "ready" else state.describe())
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


async def predict_within_timeout(
    engine: InferenceEngine, images: list[bytes], settings: ServeSettings
) -> list[PredictionResult]:
    """The engine's predictions, or 504 once SAGEMAKER_MODEL_SERVER_TIMEOUT has passed (the request's
    images still queued are dropped; one already in a forward pass finishes unseen)."""
    try:
        async with asyncio.timeout(settings.model_server_timeout_s):
            return await engine.predict(images)
    except TimeoutError:
        raise HTTPException(
            504,
            detail=(
                f"inference of {len(images)} image(s) took longer than SAGEMAKER_MODEL_SERVER_TIMEOUT="
                f"{settings.model_server_timeout_s:g} s; send fewer images per request"
            ),
        ) from None


@health.get(
    "/execution-parameters",
    response_model=ExecutionParametersOut,
    responses=_NOT_READY,
    summary="Batch transform settings (SageMaker)",
)
async def execution_parameters(request: Request, engine: EngineDep, settings: SettingsDep) -> ExecutionParametersOut:
    """What SageMaker batch transform should use when the job leaves them unset: `MaxConcurrentTransforms`
    (workers x the batch size the measured forward throughput levels off at), `BatchStrategy` and
    `MaxPayloadInMB` (the body limit). Measured on the first call (a few seconds), then cached."""
    cache = getattr(request.app.state, "execution_parameters", None)
    if cache is None:
        cache = request.app.state.execution_parameters = ExecutionParameters()
    return await cache.get(engine, workers=settings.workers, max_payload_mb=settings.max_payload_mb)


# ------------------------------------------------------------------------------- SageMaker invocations

invocations = APIRouter(tags=["inference"])

_B64_EXAMPLE = "/9j/4AAQSkZJRgABAQAAAQABAAD/..."
_INVOCATIONS_BODY = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body, or a batch of base64 images as JSON / JSON Lines.",
        "content": {
            **{
                kind: {"schema": {"type": "string", "format": "binary"}}
                for kind in (
                    "image/jpeg",
                    "image/png",
                    "image/webp",
                    "image/heic",
                    "application/x-image",
                    "application/octet-stream",
                )
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {
                        "instances": {
                            "type": "array",
                            "items": {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string"}}},
                        }
                    },
                },
                "example": {"instances": [{"b64": _B64_EXAMPLE}, {"b64": _B64_EXAMPLE}]},
            },
            "application/jsonlines": {
                "schema": {"type": "string"},
                "example": '{"b64": "%s"}\n{"b64": "%s"}\n' % (_B64_EXAMPLE, _B64_EXAMPLE),
            },
        },
    }
}


@invocations.post(
    "/invocations",
    summary="Count objects in bin photos (SageMaker)",
    response_model=InvocationResponse,
    openapi_extra=_INVOCATIONS_BODY,
    responses={
        200: {
            "content": {
                "application/jsonlines": {
                    "schema": {"type": "string"},
                    "example": '{"count":3,"label":"3","confidence":0.7,...}\n',
                }
            },
            "description": "One prediction per image, in request order. `Accept: application/jsonlines` gives "
            "one JSON object per line. An image of a batch that cannot be read gets "
            '`{"error": ...}` in its place.',
        },
        **INVOCATIONS_ERRORS,
    },
)
async def invoke(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Raw `image/jpeg`, `image/png`, `image/webp`, `image/heic` (any format the decoder reads) or
    `application/x-image` -> one prediction; `application/json` `{"instances": [{"b64": ...}, ...]}` or
    `application/jsonlines` -> one per image; `application/octet-stream` (or no Content-Type): read from the
    bytes, JSON when they start with `{`, else one image."""
    response_type = codecs.choose_response_type(request.headers.get("accept"))
    kind = codecs.request_kind(request.headers.get("content-type"))  # 415 before reading the body
    with engine.arriving():
        decoded = codecs.decode_request(kind, await request.body())
    results = await predict_within_timeout(engine, decoded.images, settings)
    if all(isinstance(r, ImageFailure) for r in results):
        if len(results) == 1:
            raise codecs.BadRequest(results[0].error)
        raise codecs.BadRequest(
            "no image could be read: " + "; ".join(f"image {i}: {r.error}" for i, r in enumerate(results))
        )
    return Response(codecs.encode_response((r.to_dict() for r in results), response_type), media_type=response_type)


# ------------------------------------------------------------------------------- photo upload

upload = APIRouter(tags=["inference"])


@upload.post(
    "/predict",
    summary="Upload bin photos, optionally check an expected quantity",
    response_model=PredictResponse,
    responses=PREDICT_ERRORS,
)
async def predict(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    files: Annotated[
        list[UploadFile],
        File(description="One or more bin photos (JPEG, PNG, WebP, HEIC or another common photo format)."),
    ],
    expected_quantity: Annotated[
        int | None,
        Form(
            ge=0,
            le=10_000,
            description=(
                "The number of items the bin should hold. Each photo then gets the probability of exactly that "
                "many, whether the prediction matches, and a manual-check flag."
            ),
        ),
    ] = None,
) -> PredictResponse:
    """Counts the objects in each photo. Photos that cannot be read are reported one by one; the request
    fails (400) only when none can be read. Each file's format comes from its bytes, as on `/invocations`
    (browsers label a file by its name's extension, so its part's Content-Type is not relied on)."""
    repeated = len((await request.form()).getlist("expected_quantity"))  # the form FastAPI already parsed
    if repeated > 1:  # FastAPI would take one of them silently (found by tests/test_serving_api_fuzz.py)
        raise HTTPException(422, detail=f"invalid request: expected_quantity: sent {repeated} times; send it once")
    images = [await f.read() for f in files]
    results = await predict_within_timeout(engine, images, settings)
    if all(isinstance(r, ImageFailure) for r in results):
        raise codecs.BadRequest(
            "no photo could be read: "
            + "; ".join(f"{f.filename or i}: {r.error}" for i, (f, r) in enumerate(zip(files, results)))
        )
    labels = engine.predictor.metadata.labels
    min_confidence, min_expected_probability = thresholds(
        settings.manual_check_confidence,
        settings.manual_check_expected_probability,
        engine.predictor.metadata.metrics,
    )
    photos = [
        unreadable(f.filename, expected_quantity, r.error)
        if isinstance(r, ImageFailure)
        else assess(
            r,
            labels,
            f.filename,
            expected_quantity,
            min_confidence,
            min_expected_probability,
        )
        for f, r in zip(files, results)
    ]
    return PredictResponse(architecture=engine.predictor.metadata.architecture, labels=labels, results=photos)


# ------------------------------------------------------------------------------- model info

model_info = APIRouter(tags=["model"])


@model_info.get("/model", response_model=ModelInfo, responses=_NOT_READY, summary="The served model's metadata")
async def get_model(engine: EngineDep) -> ModelInfo:
    """The artifact's `model.json` (architecture, labels, preprocessing, metrics, provenance) and the runtime
    serving it (torch or ONNX Runtime, and why)."""
    predictor = engine.predictor
    return ModelInfo(
        model_dir=str(predictor.model_dir) if predictor.model_dir else None,
        metadata=predictor.metadata,
        class_values=predictor.metadata.class_values,
        max_batch_size=predictor.max_batch_size,
        runtime=predictor.runtime.to_dict(),
    )


ROUTERS = (health, invocations, upload, model_info)
