"""ASGI middleware refusing request bodies above a size limit with 413, before they fill memory.

A declared ``Content-Length`` over the limit is refused without reading the body; a body that
streams in larger than the limit (chunked, or a lying header) is cut off as soon as it passes
the limit. The error reaches the route as :class:`PayloadTooLarge` (an ``HTTPException``, so
FastAPI's form parsing lets it through unchanged) and becomes a JSON 413.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class PayloadTooLarge(HTTPException):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            413,
            detail=(
                f"request body is larger than the limit of {limit_bytes / 2**20:g} MiB "
                f"({limit_bytes} bytes; SAGEMAKER_MAX_PAYLOAD_IN_MB); send fewer or smaller images per request"
            ),
        )


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Connection: close, since the rest of the body is never read.
        response = JSONResponse(
            {"error": PayloadTooLarge(self.max_bytes).detail}, status_code=413, headers={"Connection": "close"}
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
