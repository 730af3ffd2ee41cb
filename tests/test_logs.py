from __future__ import annotations

import io
import json

import structlog

from outagewatch.logs import configure_logging


def test_exception_logs_carry_no_locals():
    """A logged traceback never includes local variables, where passwords live."""
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    log = structlog.get_logger("test")

    def login(password):
        raise ValueError("refused")

    try:
        login("hunter2-secret")
    except ValueError:
        log.exception("login_failed")
    line = stream.getvalue().strip().splitlines()[-1]
    record = json.loads(line)
    assert "login_failed" == record["event"]
    assert "hunter2-secret" not in line
    assert "refused" in line


def test_level_filters_and_json_shape():
    stream = io.StringIO()
    configure_logging("warning", json=True, stream=stream)
    log = structlog.get_logger("test")
    log.info("hidden")
    log.warning("shown", target="imap-eu")
    (record,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert ("shown", "warning", "imap-eu") == (record["event"], record["level"],
                                               record["target"])
    assert record["timestamp"].endswith("Z")


def test_console_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    configure_logging("info", stream=stream)
    structlog.get_logger("test").info("hello", target="x")
    assert "hello" in stream.getvalue()
    assert not stream.getvalue().lstrip().startswith("{")


def test_time_fields_are_iso_8601_utc():
    """Issue 12: one time format for machines: fields holding a point in time are ISO 8601 UTC
    whether logged as Unix seconds or a datetime; other numbers stay numbers."""
    from datetime import UTC, datetime

    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    structlog.get_logger("test").warning(
        "outage_declared", outage_start=1797390000.0, restored_at=1797390000.25,
        started_at=datetime(2026, 12, 16, 3, 0, tzinfo=UTC), etr=None, duration_s=1.5,
        count=3, ok=True)
    record = json.loads(stream.getvalue())
    assert "2026-12-16T03:00:00Z" == record["outage_start"]
    assert "2026-12-16T03:00:00.250Z" == record["restored_at"]
    assert "2026-12-16T03:00:00Z" == record["started_at"]
    assert (None, 1.5, 3, True) == (record["etr"], record["duration_s"], record["count"],
                                    record["ok"])
