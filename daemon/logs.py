"""Structured JSON logs on stdout, one object per line, via structlog."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from daemon.redact import redact_event

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def configure(level: str = "info", stream: TextIO | None = None,
              extra_processors: list[Any] | None = None) -> None:
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        *(extra_processors or []),
        # last before rendering, so tracebacks and extra processors' output are scrubbed too
        redact_event,
        structlog.processors.JSONRenderer(default=str),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
