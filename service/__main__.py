"""``serve`` / ``python -m service``: the HTTP server (SageMaker starts it as ``docker run IMAGE serve``).

Configuration comes from the environment (see :mod:`service.settings`); the options below
override it and are written back into the environment so every worker process sees them.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from service.allocator import configure_allocator
from service.logs import configure_logging, logging_config

if TYPE_CHECKING:
    from service.settings import ServeSettings

logger = logging.getLogger("service.serve")

#: Option -> environment variable it overrides.
_OPTION_ENV = {
    "model_dir": "MODEL_DIR",
    "host": "BINSIGHT_HOST",
    "port": "SAGEMAKER_BIND_TO_PORT",
    "workers": "SAGEMAKER_MODEL_SERVER_WORKERS",
    "log_level": "BINSIGHT_LOG_LEVEL",
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="serve",
        description="Serve a binsight model over HTTP: /ping, /invocations, /predict, /model, /docs. "
        "Settings come from the environment (MODEL_DIR, SAGEMAKER_BIND_TO_PORT, "
        "SAGEMAKER_MODEL_SERVER_WORKERS, SAGEMAKER_MAX_PAYLOAD_IN_MB, BINSIGHT_*); "
        "these options override it.",
    )
    parser.add_argument("--model-dir", help="artifact directory (model.json + model.pth); overrides MODEL_DIR")
    parser.add_argument("--host", help="interface to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (default SAGEMAKER_BIND_TO_PORT or 8080)")
    parser.add_argument("--workers", type=int, help="worker processes, each with its own model copy")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    args = list(argv)
    if args and args[0] == "serve":  # `docker run IMAGE serve` with `serve` as the entry point too
        args = args[1:]
    return parser.parse_args(args)


def _ignore_signal(signum, frame) -> None:
    """uvicorn re-raises the signal that stopped it once it has shut down; with this handler in
    place that is a no-op, so a graceful SIGTERM shutdown exits with status 0 instead of 143."""


def _log_start(settings: "ServeSettings", allocator: str) -> None:
    if settings.model.path is None:
        # Keep serving: /ping answers 503 with this reason, as SageMaker expects of a broken model.
        logger.error("%s", settings.model.not_found_message())
    logger.info(
        "serve starting: host: %s port: %d workers: %d model_dir: %s model_source: %s max_payload_mb: %g "
        "max_batch_size: %d batch_wait_ms: %g runtime: %s precision: %s model_server_timeout_s: %g "
        "safe_port_range: %s grace_period_s: %d allocator: %s",
        settings.host,
        settings.port,
        settings.workers,
        settings.model.path,
        settings.model.source or "none",
        settings.max_payload_mb,
        settings.max_batch_size,
        settings.batch_wait_ms,
        settings.runtime,
        settings.precision,
        settings.model_server_timeout_s,
        settings.safe_port_range or "none",
        settings.grace_period_s,
        allocator,
    )
    if settings.safe_port_range is not None and settings.port in settings.safe_port_range:
        logger.warning(
            "bind port %d lies inside SAGEMAKER_SAFE_PORT_RANGE=%s, the ports other containers on this host may take",
            settings.port,
            settings.safe_port_range,
        )


def uvicorn_config(settings: "ServeSettings"):
    """uvicorn's configuration: one process serving ``create_app(settings)``, or workers building theirs."""
    import uvicorn  # here, not at import time: `python -m service --help` stays fast

    common = dict(
        host=settings.host,
        port=settings.port,
        http="h11",  # service.server's drain reads h11 connection state
        log_config=logging_config(settings.log_level, settings.access_log),
        access_log=settings.access_log,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=settings.grace_period_s,
        proxy_headers=False,
        server_header=False,
    )
    if settings.workers == 1:
        from service.app import create_app

        return uvicorn.Config(create_app(settings, settle_heap=True), **common)
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
        # A worker imports torch before it can answer the supervisor's health check; uvicorn's
        # default of 5 s would kill and restart it on a busy or slow machine.
        common["timeout_worker_healthcheck"] = 120
    return uvicorn.Config("service.app:create_app_from_env", factory=True, workers=settings.workers, **common)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Before torch loads its OpenMP runtime (it reads this once): idle intra-op threads sleep
    # instead of spinning, so they do not steal the cores that decode images and run the event
    # loop. On a busy CPU spinning threads made a forward pass 10-40x slower in our measurements.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    allocator = configure_allocator()  # before any thread starts: glibc's arenas are made per thread
    from service.settings import ServeSettings, SettingsError  # imports torch

    for option, var in _OPTION_ENV.items():
        value = getattr(args, option)
        if value is not None:
            os.environ[var] = str(value)
    try:
        settings = ServeSettings.from_env()
    except SettingsError as exc:
        configure_logging()
        logger.error("%s", exc)
        return 2
    configure_logging(settings.log_level, settings.access_log)
    _log_start(settings, allocator)
    from service import server

    signal.signal(signal.SIGTERM, _ignore_signal)
    signal.signal(signal.SIGINT, _ignore_signal)
    server.run(uvicorn_config(settings))
    logger.info("serve stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
