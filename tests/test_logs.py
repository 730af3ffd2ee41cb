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
