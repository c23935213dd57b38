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
    # cache_logger_on_first_use stays False: configure runs more than once in a process (tests
    # swap in capturing processors, the bench replays several times, each into its own log
    # file), and a cached logger would keep the configuration of its first call, e.g. a file
    # closed since. The price, a logger assembled on every call, is for hot paths to avoid:
    # they ask `enabled` first.
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


def enabled(level: int) -> bool:
    """Whether a call at `level` (logging.DEBUG, ...) would reach the processors under the
    current configuration, without assembling a logger (see `configure`). A wrapper class that
    does not filter by level lets everything through."""
    wrapper = structlog.get_config()["wrapper_class"]
    is_enabled_for = getattr(wrapper, "is_enabled_for", None)
    return True if is_enabled_for is None else bool(is_enabled_for(wrapper, level))
