"""What the app sees of a graceful drain: the server's :class:`Drain`, and ``Connection: close`` while it lasts.

The server (:mod:`service.server`) owns the drain and puts it into the ASGI lifespan state, which
uvicorn copies into every request's ``scope["state"]``; so the app needs no global and an app run
without that server (tests, in process) simply never drains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The key of the :class:`Drain` in the lifespan state (and so in every request's ``scope["state"]``).
DRAIN_STATE_KEY = "binsight.drain"

_CLOSE = (b"connection", b"close")


@dataclass
class Drain:
    """Set by the server on SIGTERM: the process answers what it has received and then exits."""

    grace_s: float
    since: float | None = None  # time.monotonic() when the drain began
    signal_name: str = ""

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self, signal_name: str) -> None:
        if self.since is None:
            self.since, self.signal_name = time.monotonic(), signal_name

    def describe(self) -> str:
        elapsed = 0.0 if self.since is None else time.monotonic() - self.since
        return (
            f"server is shutting down ({self.signal_name or 'signal'} {elapsed:.1f} s ago, grace period "
            f"{self.grace_s:g} s); send requests to another instance"
        )


def drain_of(scope: Scope) -> Drain | None:
    """The server's drain from a request's scope, or None (no draining server, e.g. in-process tests)."""
    state = scope.get("state")
    drain = state.get(DRAIN_STATE_KEY) if isinstance(state, dict) else None
    return drain if isinstance(drain, Drain) else None


class CloseWhileDraining:
    """ASGI middleware: every response that starts while the server drains carries ``Connection: close``.

    A keep-alive client then stops reusing its connection after this answer instead of sending its
    next request into a connection that is about to be closed (uvicorn closes it after the response).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        drain = drain_of(scope) if scope["type"] == "http" else None
        if drain is None:
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and drain.draining:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        await self.app(scope, receive, send_closing)
