"""Shared by the end-to-end tests: an aiosmtpd relay that keeps what the daemon sends."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP
from tests.helpers.relay import Relay


@pytest.fixture(name="relay")
async def _relay():
    sink = Relay()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="relay.test"),
                                      "127.0.0.1", 0)
    sink.port = server.sockets[0].getsockname()[1]
    yield sink
    server.close()
    await server.wait_closed()
