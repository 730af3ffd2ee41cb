"""POP3 probe: stdlib poplib in a worker thread (anyio), as the user asked.

DNS and TCP connect run on the event loop, and so does the wait for the greeting (plain and
STLS): a server that accepts and never speaks costs no thread. The blocking dialogue
(greeting, STLS, USER/PASS, STAT, QUIT; the TLS handshake first for POP3S) then runs in a
worker thread that is the target's own: a target never runs twice at once, so its probe never
waits for a thread, and never behind another target's slow server; no waiting is ever
measured as the server's time. poplib's socket timeout is per recv and cannot stop a server
that drips a byte a second, so at the deadline the loop shuts the connection down under the
thread (through a dup of its descriptor, valid even after TLS wrapping), which makes the
blocked recv return and the thread end. Threads that outlive their probe anyway are counted.
poplib bounds each line but not the lines of a multi-line answer, so the whole dialogue has a
byte budget; only a server's ``-`` reply is a refusal, what poplib says itself (a line too
long, the connection closed) is a protocol failure.
The steps are a ``Pop3Session`` (each blocking step one call into the target's thread), so
that a probe that looks for a mail reuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import poplib
import socket
import threading
from typing import TYPE_CHECKING, TypeVar

import anyio

from outagewatch.model import Phase, Result
from outagewatch.probes._common import (
    PhaseTimer,
    ProbeFailure,
    header_value,
    mismatch,
    open_socket,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Sequence

    from outagewatch.config import Pop3Target, TlsMode
    from outagewatch.probes import ProbeRun, ThreadTracker
    from outagewatch.tls import RecordingContext

PHASES: tuple[Phase, ...] = (
    Phase.DNS, Phase.CONNECT, Phase.TLS, Phase.GREETING, Phase.STARTTLS,
    Phase.LOGIN, Phase.STAT, Phase.LOGOUT,
)

# A probe's whole conversation is well under a KiB (CAPA lists a dozen short lines). Without a
# budget a server flooding CAPA lines grew memory by some 15 MB/s until the deadline.
MAX_RECEIVED = 64 * 1024

_T = TypeVar("_T")


class _Pop3(poplib.POP3):
    """poplib on a socket we connected ourselves (the stdlib hook ``_create_socket``)."""

    def __init__(self, sock: socket.socket, host: str, timeout: float,
                 max_received: int = MAX_RECEIVED) -> None:
        self._given = sock
        self._received = 0  # bytes read so far, the greeting's included
        self._max_received = max_received
        try:
            super().__init__(host, 0, timeout=timeout)  # reads the greeting
        except BaseException:
            # poplib made a file on the socket before the greeting failed; close it, or the
            # socket cannot really close
            file = getattr(self, "file", None)
            if file is not None:
                file.close()
            raise

    def _create_socket(self, timeout: float | None) -> socket.socket:
        del timeout
        return self._given

    def fresh_budget(self) -> None:
        self._received = 0

    def _getline(self) -> tuple[bytes, int]:
        """poplib's one read of a line, within the dialogue's byte budget."""
        try:
            line, octets = super()._getline()  # type: ignore[misc]  # private, not in typeshed
        except poplib.error_proto as exc:  # poplib's own words, not the server's
            eof = _reply(exc) == "-ERR EOF"
            reason = "server closed the connection" if eof else "server sent an over-long line"
            raise ProbeFailure(Result.PROTOCOL, reason) from None
        self._received += octets
        if self._received > self._max_received:
            raise ProbeFailure(Result.PROTOCOL,
                               f"server sent more than {self._max_received} bytes")
        return line, octets

    def _getresp(self) -> bytes:
        """A one-line reply; a ``-`` reply raises error_proto (a refusal), anything else that
        is not ``+`` is no POP3 reply at all."""
        greeting = not hasattr(self, "welcome")  # poplib sets it from the first reply
        try:
            reply: bytes = super()._getresp()  # type: ignore[misc]  # private, not in typeshed
        except poplib.error_proto as exc:
            arg = exc.args[0] if exc.args else b""
            line = arg if isinstance(arg, bytes) else str(arg).encode()
            if not line.startswith(b"-"):
                raise mismatch("POP3", line, what="greeting" if greeting else "reply") from None
            raise
        return reply


def _capabilities(pop: poplib.POP3) -> dict[str, list[str]]:
    try:
        return pop.capa()
    except poplib.error_proto:
        return {}


def _reply(exc: poplib.error_proto) -> str:
    """The server's words, printable (no terminal escapes into logs) and short."""
    arg = exc.args[0] if exc.args else b""
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:200])


def _wrap(tls: RecordingContext, sock: socket.socket, host: str) -> ssl.SSLSocket:
    """TLS on a connected blocking socket, without leaking it on any failure.

    CPython 3.11's SSLSocket constructor takes over the descriptor and then, when the peer
    has already reset, re-raises the error without closing it. So: make sure the socket is
    still connected first (raising on our own socket, which the caller closes), handshake
    outside the constructor, and close the SSLSocket ourselves when the handshake fails.
    """
    try:
        sock.getpeername()
    except OSError:
        raise ConnectionResetError("server closed the connection before the TLS handshake") \
            from None
    wrapped = tls.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    try:
        wrapped.do_handshake()
    except BaseException:
        wrapped.close()
        raise
    tls.record(wrapped.getpeercert())
    return wrapped


def _stls(pop: _Pop3, tls: RecordingContext, host: str) -> ssl.SSLSocket:
    """poplib's stls(), with the leak-free _wrap."""
    try:
        pop._shortcmd("STLS")  # type: ignore[attr-defined]  # noqa: SLF001 - poplib's helper
    except poplib.error_proto as exc:
        raise ProbeFailure(Result.TLS, f"STLS refused: {_reply(exc)}") from None
    wrapped = _wrap(tls, pop.sock, host)
    pop.file.close()
    pop.sock = wrapped
    pop.file = wrapped.makefile("rb")
    pop._tls_established = True  # type: ignore[attr-defined]  # noqa: SLF001
    return wrapped


async def _greeted(sock: socket.socket) -> None:
    """Return once the server has sent something (its greeting, or a hang-up)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = sock.fileno()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class _Worker:
    """Runs the session's blocking steps, one at a time, in the target's own thread; knows
    whether the probe has given up on a step, and then leaves the closing to that thread."""

    def __init__(self, threads: ThreadTracker, close: Callable[[], None]) -> None:
        self._threads = threads
        self._close = close
        self._lock = threading.Lock()
        self._running = False
        self._abandoned = False
        self._closed = False

    def run(self, step: Callable[[], _T]) -> _T | None:
        with self._lock:
            if self._abandoned or self._closed:  # gave up before a thread was free
                return None
            self._running = True
            self._threads.started()
        try:
            return step()
        finally:
            with self._lock:
                self._running = False
                self._threads.ended(was_abandoned=self._abandoned)
                if self._abandoned and not self._closed:  # the loop left this to us
                    self._closed = True
                    self._close()

    def abandon(self) -> None:
        """Give up on the step in progress (if any): it closes the connection when it ends."""
        with self._lock:
            if self._abandoned:
                return
            self._abandoned = True
            if self._running:
                self._threads.abandoned()

    def close(self) -> None:
        """Close now unless a step still runs (then that step's thread closes on its end)."""
        with self._lock:
            self._abandoned = True
            if self._running or self._closed:
                return
            self._closed = True
        self._close()


class Pop3Session:
    """One POP3 connection, a method per step; whatever happens, end with ``close()``.

    DNS, TCP connect and the wait for a plain greeting run on the event loop; each blocking
    step then runs in a worker thread under the target's own token (``limiter``). A step cut
    short by the deadline shuts the connection down under its thread (through ``_killer``, a
    dup of the descriptor) and the thread closes what is left when it ends. The whole
    dialogue reads at most ``max_received`` bytes.
    """

    def __init__(
        self, sock: socket.socket, *, timer: PhaseTimer, threads: ThreadTracker,
        limiter: anyio.CapacityLimiter, per_read: float,
    ) -> None:
        self._raw = sock
        self._sock: socket.socket | ssl.SSLSocket = sock
        # A second descriptor for the same connection: shutdown() through it unblocks the
        # worker's recv whatever poplib or ssl did to the original socket object.
        self._killer = sock.dup()
        self._pop: _Pop3 | None = None
        self._timer = timer
        self._limiter = limiter
        self._per_read = per_read
        self._worker = _Worker(threads, self._close_now)

    @classmethod
    async def connect(
        cls, host: str, port: int, tls_mode: TlsMode, *, timer: PhaseTimer,
        tls: RecordingContext | None, threads: ThreadTracker, limiter: anyio.CapacityLimiter,
        per_read: float, max_received: int = MAX_RECEIVED,
    ) -> Pop3Session:
        """Connect, read the greeting and, under ``starttls``, secure the connection: phases
        dns, connect, tls (implicit TLS only), greeting, starttls."""
        sock = await open_socket(host, port, timer)
        try:
            session = cls(sock, timer=timer, threads=threads, limiter=limiter,
                          per_read=per_read)
        except BaseException:
            sock.close()
            raise
        try:
            if tls_mode != "implicit":  # POP3S greets after the handshake, in the thread
                timer.enter(Phase.GREETING)
                await _greeted(sock)
            await session._call(lambda: session._open(host, tls_mode, tls, max_received))
        except BaseException:
            await session.close()
            raise
        return session

    def _open(self, host: str, tls_mode: TlsMode, tls: RecordingContext | None,
              max_received: int) -> None:
        sock = self._raw
        sock.setblocking(True)  # noqa: FBT003 - stdlib signature
        sock.settimeout(self._per_read)
        if tls_mode == "implicit":
            assert tls is not None
            self._timer.enter(Phase.TLS)
            self._sock = _wrap(tls, sock, host)
        self._timer.enter(Phase.GREETING)
        self._pop = _Pop3(self._sock, host, self._per_read, max_received)
        if tls_mode == "starttls":
            assert tls is not None
            self._timer.enter(Phase.STARTTLS)
            if "STLS" not in _capabilities(self._pop):
                raise ProbeFailure(Result.TLS, "server does not offer STLS")
            self._sock = _stls(self._pop, tls, host)

    async def _call(self, step: Callable[[], _T]) -> _T:
        try:
            result = await anyio.to_thread.run_sync(
                self._worker.run, step, abandon_on_cancel=True, limiter=self._limiter)
        except BaseException:
            self._worker.abandon()
            with contextlib.suppress(OSError):
                self._killer.shutdown(socket.SHUT_RDWR)
            raise
        return result  # type: ignore[return-value]  # None only once abandoned

    @property
    def pop(self) -> _Pop3:
        assert self._pop is not None
        return self._pop

    async def login(self, username: str, password: str) -> None:
        def step() -> None:
            self._timer.enter(Phase.LOGIN)
            try:
                self.pop.user(username)
                self.pop.pass_(password)
            except poplib.error_proto as exc:
                raise ProbeFailure(Result.AUTH, f"login refused: {_reply(exc)}") from None
        await self._call(step)

    async def stat(self, *, phase: Phase | None = Phase.STAT) -> int:
        """The number of messages (STAT), in ``phase`` or in the phase in progress."""
        def step() -> int:
            if phase is not None:
                self._timer.enter(phase)
            count, _size = self.pop.stat()
            return count
        return await self._call(step)

    async def top_header(self, number: int, name: str) -> str | None:
        """Header ``name`` of message ``number`` (``TOP n 0``); None when it has none."""
        def step() -> str | None:
            try:
                _resp, lines, _octets = self.pop.top(number, 0)
            except poplib.error_proto as exc:
                raise ProbeFailure(Result.PROTOCOL, f"TOP {number} 0 failed: {_reply(exc)}") \
                    from None
            return header_value(b"\r\n".join(lines) + b"\r\n\r\n", name)
        return await self._call(step)

    def fresh_budget(self) -> None:
        """A long-lived session (the mail loop reading header after header) bounds what the
        server may send per step, not over the session's whole life."""
        self.pop.fresh_budget()

    async def dele(self, numbers: Sequence[int]) -> None:
        """Mark messages deleted; they go at ``quit()`` (the UPDATE state)."""
        def step() -> None:
            for number in numbers:
                try:
                    self.pop.dele(number)
                except poplib.error_proto as exc:
                    raise ProbeFailure(Result.PROTOCOL, f"DELE {number} failed: "
                                       f"{_reply(exc)}") from None
        if numbers:
            await self._call(step)

    async def quit(self, *, phase: Phase | None = Phase.LOGOUT) -> None:
        def step() -> None:
            if phase is not None:
                self._timer.enter(phase)
            try:
                self.pop.quit()
            except poplib.error_proto as exc:
                raise ProbeFailure(Result.PROTOCOL, f"QUIT failed: {_reply(exc)}") from None
        await self._call(step)

    def _close_now(self) -> None:
        if self._pop is not None:
            self._pop.close()
        self._sock.close()

    async def close(self) -> None:
        """Close the connection; safe on every path (a step still running closes it)."""
        self._worker.close()
        self._killer.close()


async def probe(target: Pop3Target, run: ProbeRun) -> None:
    session = await Pop3Session.connect(
        target.host, target.effective_port, target.tls, timer=run.timer, tls=run.tls,
        threads=run.ctx.threads, limiter=run.ctx.pop3_worker(target.name),
        per_read=run.timeout,
    )
    try:
        await session.login(target.username, target.secret() or "")
        await session.stat()
        await session.quit()
    finally:
        await session.close()
