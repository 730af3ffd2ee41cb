"""Simulated mail-platform services on loopback, whose health the demo can switch.

Each service speaks just enough HTTP, SMTP, IMAP or POP3 for a probe's dialogue, in plain
text. Its ``health`` is ``ok``, ``slow`` (the greeting comes ``delay`` seconds late) or
``dead`` (connections are accepted and never answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Callable
    from email.message import Message


@dataclass
class Health:
    state: str = "ok"
    delay: float = 0.0

    async def gate(self, closing: asyncio.Event) -> bool:
        """Wait as the health says; False when the connection should get no answer."""
        if self.state == "dead":
            await closing.wait()
            return False
        if self.state == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), self.delay)
        return not closing.is_set()


def _smtp(line: str) -> tuple[str, bool]:
    verb = line.split(" ", 1)[0].upper()
    if verb in {"EHLO", "HELO"}:
        return "250-demo.invalid\r\n250-AUTH PLAIN\r\n250 HELP\r\n", False
    if verb == "AUTH":
        return "235 2.7.0 Authentication successful\r\n", False
    if verb == "QUIT":
        return "221 bye\r\n", True
    return "250 OK\r\n", False


def _imap(line: str) -> tuple[str, bool]:
    tag, _, rest = line.partition(" ")
    verb = rest.split(" ", 1)[0].upper()
    if verb == "CAPABILITY":
        return f"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n", False
    if verb == "SELECT":
        return (f"* 1 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Seen)\r\n"
                f"{tag} OK [READ-WRITE] SELECT completed\r\n"), False
    if verb == "LOGOUT":
        return f"* BYE bye\r\n{tag} OK done\r\n", True
    return f"{tag} OK done\r\n", False


def _pop3(line: str) -> tuple[str, bool]:
    verb = line.split(" ", 1)[0].upper()
    if verb == "CAPA":
        return "+OK\r\nUSER\r\n.\r\n", False
    if verb == "STAT":
        return "+OK 1 120\r\n", False
    if verb == "QUIT":
        return "+OK bye\r\n", True
    return "+OK\r\n", False


_DIALOGUES = {
    "smtp": ("220 demo.invalid ESMTP ready\r\n", _smtp),
    "imap": ("* OK demo IMAP ready\r\n", _imap),
    "pop3": ("+OK demo POP3 ready\r\n", _pop3),
}


@dataclass
class Service:
    kind: str
    health: Health = field(default_factory=Health)
    port: int = 0
    _server: asyncio.Server | None = None
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        if self.kind == "http":
            app = web.Application()
            app.router.add_get("/", self._page)
            self._runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            server = site._server  # noqa: SLF001 - learn the port picked for port 0
            assert isinstance(server, asyncio.Server)
        else:
            server = await asyncio.start_server(self._talk, "127.0.0.1", 0)
            self._server = server
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _page(self, _request: web.Request) -> web.Response:
        if not await self.health.gate(self._closing):
            return web.Response(status=503)
        return web.Response(text="<title>Demo App Suite</title>", content_type="text/html")

    async def _talk(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        greeting, answer = _DIALOGUES[self.kind]
        try:
            if not await self.health.gate(self._closing):
                return
            writer.write(greeting.encode())
            await writer.drain()
            while line := await reader.readline():
                reply, done = answer(line.decode("utf-8", "replace").strip())
                writer.write(reply.encode())
                await writer.drain()
                if done:
                    return
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)


class MailSink:
    """A local SMTP server that accepts every mail and hands it to ``on_mail``."""

    def __init__(self, on_mail: Callable[[Message], None]) -> None:
        self._on_mail = on_mail
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._talk, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _talk(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 sink.invalid ESMTP\r\n")
            while line := await reader.readline():
                verb = line.decode("ascii", "replace").strip().split(" ", 1)[0].upper()
                if verb == "DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    data = await reader.readuntil(b"\r\n.\r\n")
                    body = data[:-5].replace(b"\r\n..", b"\r\n.")
                    self._on_mail(email.message_from_bytes(body))
                    writer.write(b"250 OK queued\r\n")
                elif verb == "QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                elif verb in {"EHLO", "HELO"}:
                    writer.write(b"250-sink.invalid\r\n250 8BITMIME\r\n")
                else:
                    writer.write(b"250 OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.transport.abort()
