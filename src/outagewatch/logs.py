"""structlog set-up: JSON lines when not on a terminal, readable console on one.

Tracebacks never carry local variables (they would carry passwords), and the stdlib loggers
of aiohttp, asyncio and aioimaplib go through the same renderer.

One time format for machines: a field that holds a point in time (``outage_start``,
``restored_at``, ``started_at`` ...: the names in ``TIME_FIELDS`` and any ``*_at``) is written
in ISO 8601 UTC, ``2026-12-16T03:00:00Z``, whether the code logged Unix seconds or a datetime.
A duration carries its unit in its name instead (``duration_s``, ``lag_s``).
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from outagewatch.model import iso_utc

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

LEVELS = ("debug", "info", "warning", "error")

# Fields holding a point in time (Unix seconds or a datetime), beside every ``*_at``.
TIME_FIELDS = frozenset({"outage_start", "streak_start", "etr", "cert_expiry"})


def _is_time_field(key: str) -> bool:
    return key in TIME_FIELDS or key.endswith("_at")


def iso_times(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Render the time fields of a log line as ISO 8601 UTC (a structlog processor)."""
    for key, value in event.items():
        if not _is_time_field(key) or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            event[key] = iso_utc(value)
        elif isinstance(value, datetime):
            event[key] = iso_utc(value.timestamp())
    return event


def configure_logging(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    stream = stream or sys.stdout
    if json is None:
        json = not stream.isatty()
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        iso_times,
    ]
    renderer: list[Any]
    if json:
        renderer = [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(),
        ]
    else:
        renderer = [structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.plain_traceback
        )]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    ))
    logging.basicConfig(handlers=[handler], level=max(numeric, logging.INFO), force=True)
    # aioimaplib logs every byte received at DEBUG; keep it out whatever the level.
    logging.getLogger("aioimaplib").setLevel(logging.WARNING)
