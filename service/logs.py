"""Plain ``key: value`` log lines, for people and for SageMaker's metric regexes alike.

    time: 2026-11-23T01:54:08.123Z level: INFO logger: service.predictor message: model loaded: ...
    time: 2026-11-23T01:54:09.004Z level: INFO logger: uvicorn.access message: client: 10.0.0.7:51234 ...
        ... method: POST path: /invocations status: 200   (one line, folded here)

Successful ``/ping`` calls (SageMaker sends one every few seconds) are left out of the access log.
"""

from __future__ import annotations

import logging
import logging.config
import time

LOG_FORMAT = "time: %(asctime)s.%(msecs)03dZ level: %(levelname)s logger: %(name)s message: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class KeyValueFormatter(logging.Formatter):
    """The format above, in UTC."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT, DATE_FORMAT)


class AccessFormatter(KeyValueFormatter):
    """uvicorn's access records (client, method, path, http version, status) as key: value pairs."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client, method, path, _, status = args
            record.message = f"client: {client} method: {method} path: {path} status: {status}"
        return super().formatMessage(record)


class SkipHealthyPing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) == 5 and args[2] == "/ping" and args[4] == 200)


def logging_config(level: str = "info", access_log: bool = True) -> dict:
    """A ``dictConfig`` for the root, service and uvicorn loggers (also usable as uvicorn's ``log_config``)."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"skip_healthy_ping": {"()": SkipHealthyPing}},
        "formatters": {
            "plain": {"()": KeyValueFormatter},
            "access": {"()": AccessFormatter},
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "stream": "ext://sys.stdout",
                "filters": ["skip_healthy_ping"],
            },
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.access": {
                "handlers": ["access"] if access_log else [],
                "level": "INFO" if access_log else "CRITICAL",
                "propagate": False,
            },
        },
    }


def configure_logging(level: str = "info", access_log: bool = True) -> None:
    logging.config.dictConfig(logging_config(level, access_log))
