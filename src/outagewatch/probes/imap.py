"""IMAP probe: connect, greeting, STARTTLS, LOGIN, SELECT, LOGOUT.

aioimaplib's protocol class is driven directly on a connection we open ourselves, because its
client has no STARTTLS, hides disconnects until a timeout, leaks sockets on error and buffers
a line without limit. Each step is raced against the connection's loss, so a server that
closes or says BYE fails at once; the output the server may send is bounded.
The steps are an ``ImapSession``, so that a probe that looks for a mail reuses them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
from typing import TYPE_CHECKING, Any

import aioimaplib

from outagewatch.model import Phase, Result
from outagewatch.probes._common import ProbeFailure, header_value, mismatch, open_socket

if TYPE_CHECKING:
    import socket
    import ssl
    from collections.abc import Awaitable, Sequence

    from outagewatch.config import ImapTarget, TlsMode
    from outagewatch.probes import ProbeRun
    from outagewatch.probes._common import PhaseTimer
    from outagewatch.tls import RecordingContext

PHASES: tuple[Phase, ...] = (
    Phase.DNS, Phase.CONNECT, Phase.TLS, Phase.GREETING, Phase.STARTTLS,
    Phase.LOGIN, Phase.SELECT, Phase.LOGOUT,
)

# A probe's whole conversation is a few hundred bytes; a search for one mail and the fetch of
# one of its header fields add a few more. Plenty of room, and a flood still ends early.
MAX_RECEIVED = 256 * 1024
# aioimaplib parses what it is given by recursion, a level and a copy of the rest per line:
# 250 KB of short lines in one read peaked at 34 MiB. Fed in small pieces, it stays small.
_PIECE = 1024


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, plus: a greeting future, a loss future, and an output bound."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.lost: asyncio.Future[str] = loop.create_future()
        super().__init__(loop, self._on_lost)
        self.greeted: asyncio.Future[None] = loop.create_future()
        self.received = 0
        self.limit = MAX_RECEIVED  # bytes the server may send until the budget is renewed
        self._greeting_seen = False

    def _on_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            reason = f": {exc}" if exc else ""
            self.lost.set_result(f"server closed the connection{reason}")

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limit:
            self._fail(f"server sent more than {self.limit} bytes")
            return
        try:
            for start in range(0, len(data), _PIECE):
                super().data_received(data[start:start + _PIECE])
        except RecursionError:
            self._fail("server sent a flood of lines")

    def _handle_line(self, line: bytes, current_cmd: Any) -> Any:
        # aioimaplib starts a greeting task for every line that arrives before the first is
        # processed; a server that floods lines would spawn thousands. Take the first only.
        if line and self.state == aioimaplib.CONNECTED:
            if self._greeting_seen:
                return None
            self._greeting_seen = True
            if not _IMAP_GREETING.match(line):  # '+OK' contains 'OK': aioimaplib would go on
                if not self.greeted.done():
                    self.greeted.set_exception(mismatch("IMAP", line))
                return None
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


_IMAP_GREETING = re.compile(rb"^\* (?:OK|PREAUTH|BYE)\b", re.IGNORECASE)
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


class CommandRefused(ProbeFailure):
    """The server answered a command NO or BAD (the connection itself is fine)."""

    def __init__(self, result: Result, detail: str, *, answer: str) -> None:
        super().__init__(result, detail)
        self.answer = answer  # "NO" (it could not, now) or "BAD" (it does not know how)


def _expect_ok(response: Any, what: str, result: Result = Result.PROTOCOL) -> None:
    if response.result != "OK":
        said = " ".join(_text(line) for line in response.lines[-1:])
        raise CommandRefused(result, f"{what} failed: {response.result} {said}".strip(),
                             answer=str(response.result))


def mailbox_name(name: str) -> str:
    """A mailbox name as a SELECT argument: modified UTF-7 (RFC 3501 5.1.3), quoted, so
    ``Junk E-mail`` is that folder and not ``Junk``, and ``Indésirables`` can be selected."""
    out: list[str] = []
    run: list[str] = []

    def shift() -> None:
        if run:
            wide = base64.b64encode("".join(run).encode("utf-16-be")).decode("ascii")
            out.append("&" + wide.rstrip("=").replace("/", ",") + "-")
            run.clear()

    for char in name:
        if " " <= char <= "~":
            shift()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    shift()
    return str(aioimaplib.quoted("".join(out)))


def _search_uids(lines: list[bytes]) -> list[int]:
    """The UIDs of a SEARCH answer: aioimaplib hands over the numbers of each ``* SEARCH``
    line, and the tagged reply's text last."""
    return [int(n) for line in lines[:-1] for n in bytes(line).split() if n.isdigit()]


def _fetched_literal(lines: list[bytes], uid: int) -> bytes | None:
    """The literal that the FETCH answer for ``uid`` announces with ``{n}`` at its line's end
    (aioimaplib hands the literal over as the next item)."""
    for announce, literal in itertools.pairwise(lines):
        text = bytes(announce).rstrip()
        if text.endswith(b"}") and re.search(rb"\bUID %d\b" % uid, text) is not None:
            return bytes(literal)
    return None


class ImapSession:
    """One IMAP connection, a method per step; each step enters its phase on the timer and is
    raced against the connection's loss.

    Search, fetch, store and expunge have no phases of their own yet: they run in the phase
    in progress. Whatever happens, end with ``close()``.
    """

    def __init__(self, proto: _Protocol, sock: socket.socket, timer: PhaseTimer) -> None:
        self._proto = proto
        self._sock: socket.socket | None = sock  # ours until a transport takes it over
        self._timer = timer

    @classmethod
    async def connect(
        cls, host: str, port: int, tls_mode: TlsMode, *, timer: PhaseTimer,
        tls: RecordingContext | None,
    ) -> ImapSession:
        """Connect, read the greeting and, under ``starttls``, secure the connection: phases
        dns, connect, tls (implicit TLS only), greeting, starttls."""
        sock = await open_socket(host, port, timer)
        session = cls(_Protocol(asyncio.get_running_loop()), sock, timer)
        try:
            await session._open(host, tls_mode, tls)
        except BaseException:
            await session.close()
            raise
        return session

    async def _open(self, host: str, tls_mode: TlsMode, tls: RecordingContext | None) -> None:
        proto, timer = self._proto, self._timer
        implicit = tls_mode == "implicit"
        timer.enter(Phase.TLS if implicit else Phase.GREETING)
        await asyncio.get_running_loop().create_connection(
            lambda: proto,
            sock=self._sock,
            ssl=tls if implicit else None,
            server_hostname=host if implicit else None,
        )
        self._sock = None  # the transport owns it now
        if implicit:
            timer.enter(Phase.GREETING)
        await self._step(proto.greeted)  # set once the greeting and CAPABILITY are through
        if tls_mode == "starttls":
            assert tls is not None
            timer.enter(Phase.STARTTLS)
            await self._step(self._start_tls(tls, host))

    async def _start_tls(self, ctx: ssl.SSLContext, host: str) -> None:
        proto, loop = self._proto, asyncio.get_running_loop()
        if "STARTTLS" not in proto.capabilities:
            raise ProbeFailure(Result.TLS, "server does not offer STARTTLS")
        response = await proto.execute(aioimaplib.Command("STARTTLS", proto.new_tag(), loop=loop))
        _expect_ok(response, "STARTTLS", Result.TLS)
        proto.incomplete_line = b""  # never act on anything sent before the handshake
        proto.transport = await loop.start_tls(proto.transport, proto, ctx, server_hostname=host)
        await proto.capability()  # RFC 3501: capabilities learnt before TLS are void

    async def _step(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable`` unless the connection is lost first."""
        lost = self._proto.lost
        task = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task.done() and not task.cancelled():
            return task.result()
        raise ProbeFailure(Result.PROTOCOL, lost.result())

    async def login(self, username: str, password: str) -> None:
        self._timer.enter(Phase.LOGIN)
        response = await self._step(self._proto.login(username, password))
        _expect_ok(response, "LOGIN", Result.AUTH)

    async def select(self, mailbox: str) -> None:
        self._timer.enter(Phase.SELECT)
        await self.reselect(mailbox)

    def fresh_budget(self, limit: int = MAX_RECEIVED) -> None:
        """A long-lived session (the mail loop's wait for delivery) bounds what the server
        may send per look, not over the session's whole life; ``limit`` for a step that may
        rightly say more (a search over a big mailbox)."""
        self._proto.received, self._proto.limit = 0, limit

    async def reselect(self, mailbox: str) -> None:
        """SELECT in the phase in progress (a probe going back and forth between folders)."""
        response = await self._step(self._proto.select(mailbox_name(mailbox)))
        _expect_ok(response, f"SELECT {mailbox}")

    async def noop(self) -> None:
        """NOOP, in the phase in progress: the server reports mail that arrived meanwhile."""
        response = await self._step(self._proto.simple_command("NOOP"))
        _expect_ok(response, "NOOP")

    async def uid_search(self, criteria: str) -> list[int]:
        """The UIDs matching ``criteria``, RFC 3501 search keys in US-ASCII (quoted by the
        caller), e.g. ``HEADER Message-ID "<id@host>"``."""
        response = await self._step(self._proto.search(criteria, charset=None, by_uid=True))
        _expect_ok(response, "UID SEARCH")
        return _search_uids(response.lines)

    async def uid_fetch_header(self, uid: int, name: str) -> str | None:
        """Header ``name`` of message ``uid`` (without setting \\Seen); None when the message
        or the header is missing."""
        response = await self._step(self._proto.fetch(
            str(uid), f"(BODY.PEEK[HEADER.FIELDS ({name})])", by_uid=True))
        _expect_ok(response, "UID FETCH")
        header = _fetched_literal(response.lines, uid)
        return None if header is None else header_value(header, name)

    async def uid_store_deleted(self, uids: Sequence[int]) -> None:
        """Flag messages \\Deleted; ``expunge()`` removes them."""
        if uids:
            message_set = ",".join(map(str, uids))
            response = await self._step(
                self._proto.store(message_set, "+FLAGS.SILENT", r"(\Deleted)", by_uid=True))
            _expect_ok(response, "UID STORE")

    async def expunge(self) -> None:
        response = await self._step(self._proto.expunge())
        _expect_ok(response, "EXPUNGE")

    async def uid_expunge(self, uids: Sequence[int]) -> bool:
        """Remove these \\Deleted messages and no other: ``UID EXPUNGE`` (UIDPLUS); without
        it a plain EXPUNGE, only while no other message is flagged \\Deleted (someone
        else's). False when they were left for later."""
        if not uids:
            return True
        if "UIDPLUS" in self._proto.capabilities:
            response = await self._step(self._proto.expunge(",".join(map(str, uids)),
                                                             by_uid=True))
            _expect_ok(response, "UID EXPUNGE")
            return True
        if set(await self.uid_search("DELETED")) - set(uids):
            return False
        await self.expunge()
        return True

    async def logout(self) -> None:
        self._timer.enter(Phase.LOGOUT)
        response = await self._step(self._proto.logout())
        _expect_ok(response, "LOGOUT")

    async def close(self) -> None:
        """Close the connection and end aioimaplib's tasks; safe on every path."""
        if self._sock is not None:
            self._sock.close()
        transport = self._proto.transport
        if transport is not None and not transport.is_closing():
            transport.close()
        pending = list(self._proto.tasks)
        for task in pending:
            task.cancel()
        if pending:  # let them finish cancelling, or asyncio reports them destroyed
            await asyncio.wait(pending, timeout=1)


async def probe(target: ImapTarget, run: ProbeRun) -> None:
    session = await ImapSession.connect(
        target.host, target.effective_port, target.tls, timer=run.timer, tls=run.tls
    )
    try:
        await session.login(target.username, target.secret() or "")
        await session.select(target.mailbox)
        await session.logout()
    finally:
        await session.close()
