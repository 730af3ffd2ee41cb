"""IMAP probe: connect, greeting, STARTTLS, LOGIN, SELECT, LOGOUT.

aioimaplib's protocol class is driven directly on a connection we open ourselves, because its
client has no STARTTLS, hides disconnects until a timeout, leaks sockets on error and buffers
a line without limit. Each step is raced against the connection's loss, so a server that
closes or says BYE fails at once; the output the server may send is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING, Any

import aioimaplib

from outagewatch.model import Phase, Result
from outagewatch.probes._common import ProbeFailure, open_socket

if TYPE_CHECKING:
    import socket
    import ssl
    from collections.abc import Awaitable

    from outagewatch.config import ImapTarget
    from outagewatch.probes import ProbeRun

MAX_RECEIVED = 256 * 1024  # a probe's whole conversation is a few hundred bytes


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, plus: a greeting future, a loss future, and an output bound."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.lost: asyncio.Future[str] = loop.create_future()
        super().__init__(loop, self._on_lost)
        self.greeted: asyncio.Future[None] = loop.create_future()
        self.received = 0
        self._greeting_seen = False

    def _on_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            reason = f": {exc}" if exc else ""
            self.lost.set_result(f"server closed the connection{reason}")

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > MAX_RECEIVED:
            self._fail(f"server sent more than {MAX_RECEIVED} bytes")
            return
        try:
            super().data_received(data)
        except RecursionError:
            self._fail("server sent a flood of lines")

    def _handle_line(self, line: bytes, current_cmd: Any) -> Any:
        # aioimaplib starts a greeting task for every line that arrives before the first is
        # processed; a server that floods lines would spawn thousands. Take the first only.
        if line and self.state == aioimaplib.CONNECTED:
            if self._greeting_seen:
                return None
            self._greeting_seen = True
        return super()._handle_line(line, current_cmd)

    def _fail(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)
        if self.transport is not None:
            self.transport.abort()

    async def welcome(self, command: bytes) -> None:
        try:
            capabilities = _greeting_capabilities(command)
            if capabilities is None:
                await super().welcome(command)  # greeting, then a CAPABILITY round trip
            else:
                async with self.state_condition:
                    self.state = aioimaplib.NONAUTH
                    self.capabilities = capabilities
                    self.state_condition.notify_all()
        except Exception as exc:  # a BYE or garbage greeting: report, don't log "never retrieved"
            if not self.greeted.done():
                self.greeted.set_exception(
                    ProbeFailure(Result.PROTOCOL, f"greeting refused: {_text(str(exc).encode())}")
                )
        else:
            if not self.greeted.done():
                self.greeted.set_result(None)


_GREETING_CAPABILITY = re.compile(rb"^\* OK \[CAPABILITY ([^\]]+)\]", re.IGNORECASE)


def _greeting_capabilities(line: bytes) -> set[str] | None:
    """Capabilities a server put in its greeting (RFC 3501 7.1), sparing a round trip."""
    match = _GREETING_CAPABILITY.match(line)
    if match is None:
        return None
    capabilities = set(match.group(1).decode("ascii", "replace").split())
    return capabilities if any(c.upper() == "IMAP4REV1" for c in capabilities) else None


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").strip()[:200]


async def _step(proto: _Protocol, awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable`` unless the connection is lost first."""
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({task, proto.lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.done() and not task.cancelled():
        return task.result()
    raise ProbeFailure(Result.PROTOCOL, proto.lost.result())


def _expect_ok(response: Any, what: str, result: Result = Result.PROTOCOL) -> None:
    if response.result != "OK":
        said = " ".join(_text(line) for line in response.lines[-1:])
        raise ProbeFailure(result, f"{what} failed: {response.result} {said}".strip())


async def _start_tls(
    proto: _Protocol, ctx: ssl.SSLContext, host: str, loop: asyncio.AbstractEventLoop
) -> None:
    if "STARTTLS" not in proto.capabilities:
        raise ProbeFailure(Result.TLS, "server does not offer STARTTLS")
    response = await proto.execute(aioimaplib.Command("STARTTLS", proto.new_tag(), loop=loop))
    _expect_ok(response, "STARTTLS", Result.TLS)
    proto.incomplete_line = b""  # never act on anything sent before the handshake
    proto.transport = await loop.start_tls(proto.transport, proto, ctx, server_hostname=host)
    await proto.capability()  # RFC 3501: capabilities learnt before TLS are void


async def probe(target: ImapTarget, run: ProbeRun) -> None:
    timer, tls = run.timer, run.tls
    loop = asyncio.get_running_loop()
    sock: socket.socket | None = await open_socket(target.host, target.effective_port, timer)
    proto = _Protocol(loop)
    try:
        implicit = target.tls == "implicit"
        timer.enter(Phase.TLS if implicit else Phase.GREETING)
        await loop.create_connection(
            lambda: proto,
            sock=sock,
            ssl=tls if implicit else None,
            server_hostname=target.host if implicit else None,
        )
        sock = None  # the transport owns it now
        if implicit:
            timer.enter(Phase.GREETING)
        await _step(proto, proto.greeted)  # set once the greeting and CAPABILITY are through
        if target.tls == "starttls":
            assert tls is not None
            timer.enter(Phase.STARTTLS)
            await _step(proto, _start_tls(proto, tls, target.host, loop))
        timer.enter(Phase.LOGIN)
        response = await _step(proto, proto.login(target.username, target.secret() or ""))
        _expect_ok(response, "LOGIN", Result.AUTH)
        timer.enter(Phase.SELECT)
        response = await _step(proto, proto.select(target.mailbox))
        _expect_ok(response, f"SELECT {target.mailbox}")
        timer.enter(Phase.LOGOUT)
        response = await _step(proto, proto.logout())
        _expect_ok(response, "LOGOUT")
    finally:
        if sock is not None:
            sock.close()
        if proto.transport is not None and not proto.transport.is_closing():
            proto.transport.close()
        pending = list(proto.tasks)
        for task in pending:
            task.cancel()
        if pending:  # let them finish cancelling, or asyncio reports them destroyed
            await asyncio.wait(pending, timeout=1)
