"""``serve``'s HTTP server: uvicorn, with a graceful drain on SIGTERM.

uvicorn alone answers SIGTERM by closing every idle keep-alive connection at once, so a request
that a client had just sent into one was lost without an answer (issue 12: with 64 raw keep-alive
clients, each client's last request). Here the first SIGTERM (or SIGINT) starts a drain instead:

1. the listening sockets close: no new connections;
2. ``/ping`` answers 503 and every response carries ``Connection: close`` (:mod:`service.drain`), so
   each client gets the answer to what it sent and then stops reusing its connection;
3. a connection idle for :data:`IDLE_CLOSE_S` with nothing unread in its socket is closed (a pooled
   connection nobody uses must not hold the exit up for the whole grace period);
4. once no connection is left, or the grace period less :data:`EXIT_RESERVE_S` is over, uvicorn's own
   shutdown runs (the app's lifespan shutdown) and the process exits with status 0.

A second signal ends the drain at once. The grace period is uvicorn's ``timeout_graceful_shutdown``
(``BINSIGHT_GRACE_PERIOD_S``): SageMaker sends SIGKILL 30 s after SIGTERM, compose after its
``stop_grace_period``, so it must stay below both. With several workers each worker drains its own
connections and the supervisor waits for them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from types import FrameType

import uvicorn
from uvicorn.supervisors import multiprocess

from service.drain import DRAIN_STATE_KEY, Drain

logger = logging.getLogger("service.serve")

#: A connection idle this long during a drain is closed: a client sending one request after another
#: sends its next within milliseconds (and gets Connection: close on it); one that waits this long
#: is a pooled connection nobody is using.
IDLE_CLOSE_S = 1.0
#: Kept back from the grace period for what follows the drain (lifespan shutdown, process exit).
EXIT_RESERVE_S = 2.0


class DrainingServer(uvicorn.Server):
    """:class:`uvicorn.Server` that drains on the first SIGTERM/SIGINT instead of closing connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.drain = Drain(grace_s=float(config.timeout_graceful_shutdown or 0))
        self._drain_signal: int | None = None
        self._idle: dict[object, tuple[object, float]] = {}  # connection -> (request cycle, idle since)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn copies the lifespan state into every request's scope["state"]: how the app sees the drain
        self.lifespan.state[DRAIN_STATE_KEY] = self.drain
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_signal is None and not self.should_exit:
            self._drain_signal = sig
            self._captured_signals.append(sig)  # re-raised after the exit, as uvicorn does
            return
        super().handle_exit(sig, frame)  # a second signal: stop draining

    async def on_tick(self, counter: int) -> bool:
        if self._drain_signal is not None and not self.should_exit:
            if not self.drain.draining:
                self._begin_drain()
            elif self._drained():
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.drain.draining:  # what is left of the grace period, for uvicorn's wait on busy connections
            left = self.drain.grace_s - (time.monotonic() - (self.drain.since or 0.0))
            self.config.timeout_graceful_shutdown = max(1, int(left - EXIT_RESERVE_S / 2))
        await super().shutdown(sockets=sockets)

    def _begin_drain(self) -> None:
        self.drain.begin(signal.Signals(self._drain_signal or signal.SIGTERM).name)
        for server in getattr(self, "servers", []):
            server.close()  # stops listening; the connections it accepted stay open
        connections = list(self.server_state.connections)
        logger.info(
            "drain started: signal: %s grace_s: %g connections: %d busy: %d",
            self.drain.signal_name,
            self.drain.grace_s,
            len(connections),
            sum(not _idle(c) for c in connections),
        )

    def _drained(self) -> bool:
        """True once nothing is left to answer (or the grace period is over); closes lingering idle connections."""
        now = time.monotonic()
        connections = list(self.server_state.connections)
        if now - (self.drain.since or now) >= self.drain.grace_s - EXIT_RESERVE_S:
            logger.warning(
                "drain grace period over: connections: %d busy: %d",
                len(connections),
                sum(not _idle(c) for c in connections),
            )
            return True
        self._idle = {c: seen for c, seen in self._idle.items() if c in self.server_state.connections}
        for connection in connections:
            if not _idle(connection):
                self._idle.pop(connection, None)
                continue
            cycle = getattr(connection, "cycle", None)
            seen = self._idle.get(connection)
            if seen is None or seen[0] is not cycle:
                self._idle[connection] = (cycle, now)
            elif now - seen[1] >= IDLE_CLOSE_S and not _unread_bytes(connection):
                connection.shutdown()  # idle: uvicorn closes it
        if connections or self.server_state.tasks:
            return False
        logger.info("drain done: after_s: %.2f", now - (self.drain.since or now))
        return True


def _idle(connection: object) -> bool:
    """No request in progress: none parsed and unanswered, and no part of the next one buffered (h11)."""
    cycle = getattr(connection, "cycle", None)
    if cycle is not None and not cycle.response_complete:
        return False
    parser = getattr(connection, "conn", None)
    buffered = getattr(parser, "trailing_data", (b"", False))[0]
    return not buffered


def _unread_bytes(connection: object) -> bool:
    """Whether the kernel holds bytes the event loop has not read yet (a request on its way in)."""
    transport = getattr(connection, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as peek:
            return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing there; anything else: the socket is gone
        return False


class _DrainingProcess(multiprocess.Process):
    """A uvicorn worker process whose server drains (the class travels to the spawned child by reference)."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


class _Supervisor(multiprocess.Multiprocess):
    def handle_term(self) -> None:
        for sock in self.sockets:  # the workers close their copies as they start draining
            sock.close()
        super().handle_term()

    handle_int = handle_term


def run(config: uvicorn.Config) -> None:
    """Serve until a signal has drained the server (one process, or ``config.workers`` under a supervisor)."""
    if config.workers <= 1:
        DrainingServer(config).run()
        return
    sock = config.bind_socket()
    # uvicorn's supervisor makes its workers with the module's ``Process``; ours for as long as it runs
    original, multiprocess.Process = multiprocess.Process, _DrainingProcess
    try:
        _Supervisor(config, sockets=[sock]).run()
    finally:
        multiprocess.Process = original
