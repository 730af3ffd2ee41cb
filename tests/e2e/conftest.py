"""Shared by the end-to-end tests: an aiosmtpd relay that keeps what the daemon sends."""

from __future__ import annotations

import asyncio
from email import message_from_bytes

import pytest
from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self):
        self.mails = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.mails.append((tuple(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"

    def kinds(self):
        return [m["Subject"].split("[")[1].split("]")[0] for _, m in self.mails]


@pytest.fixture(name="relay")
async def _relay():
    sink = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="relay.test"),
                                      "127.0.0.1", 0)
    sink.port = server.sockets[0].getsockname()[1]
    yield sink
    server.close()
    await server.wait_closed()
