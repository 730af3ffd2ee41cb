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
"""

from __future__ import annotations

import asyncio
import contextlib
import poplib
import socket
import threading
from typing import TYPE_CHECKING

import anyio

from outagewatch.model import Phase, Result
from outagewatch.probes._common import (
    PhaseTimer,
    ProbeFailure,
    mismatch,
    open_socket,
)

if TYPE_CHECKING:
    import ssl

    from outagewatch.config import Pop3Target
    from outagewatch.probes import ProbeRun, ThreadTracker
    from outagewatch.tls import RecordingContext

PHASES: tuple[Phase, ...] = (
    Phase.DNS, Phase.CONNECT, Phase.TLS, Phase.GREETING, Phase.STARTTLS,
    Phase.LOGIN, Phase.STAT, Phase.LOGOUT,
)

# A probe's whole conversation is well under a KiB (CAPA lists a dozen short lines). Without a
# budget a server flooding CAPA lines grew memory by some 15 MB/s until the deadline.
MAX_RECEIVED = 64 * 1024


class _Pop3(poplib.POP3):
    """poplib on a socket we connected ourselves (the stdlib hook ``_create_socket``)."""

    def __init__(self, sock: socket.socket, host: str, timeout: float) -> None:
        self._given = sock
        self._received = 0  # bytes read so far, the greeting's included
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

    def _getline(self) -> tuple[bytes, int]:
        """poplib's one read of a line, within the dialogue's byte budget."""
        try:
            line, octets = super()._getline()  # type: ignore[misc]  # private, not in typeshed
        except poplib.error_proto as exc:  # poplib's own words, not the server's
            eof = _reply(exc) == "-ERR EOF"
            reason = "server closed the connection" if eof else "server sent an over-long line"
            raise ProbeFailure(Result.PROTOCOL, reason) from None
        self._received += octets
        if self._received > MAX_RECEIVED:
            raise ProbeFailure(Result.PROTOCOL, f"server sent more than {MAX_RECEIVED} bytes")
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


def _dialogue(
    sock: socket.socket,
    target: Pop3Target,
    tls: RecordingContext | None,
    timer: PhaseTimer,
    per_read: float,
) -> None:
    """The blocking conversation; runs in a worker thread and closes what it opens."""
    sock.setblocking(True)  # noqa: FBT003 - stdlib signature
    sock.settimeout(per_read)
    current: socket.socket | ssl.SSLSocket = sock
    pop: _Pop3 | None = None
    try:
        if target.tls == "implicit":
            assert tls is not None
            timer.enter(Phase.TLS)
            current = _wrap(tls, sock, target.host)
        timer.enter(Phase.GREETING)
        pop = _Pop3(current, target.host, per_read)
        if target.tls == "starttls":
            assert tls is not None
            timer.enter(Phase.STARTTLS)
            if "STLS" not in _capabilities(pop):
                raise ProbeFailure(Result.TLS, "server does not offer STLS")
            current = _stls(pop, tls, target.host)
        timer.enter(Phase.LOGIN)
        try:
            pop.user(target.username)
            pop.pass_(target.secret() or "")
        except poplib.error_proto as exc:
            raise ProbeFailure(Result.AUTH, f"login refused: {_reply(exc)}") from None
        timer.enter(Phase.STAT)
        pop.stat()
        timer.enter(Phase.LOGOUT)
        pop.quit()
    finally:
        if pop is not None:
            pop.close()
        current.close()


class _Worker:
    """Runs the dialogue once in a thread; knows whether the probe has given up on it."""

    def __init__(self, threads: ThreadTracker) -> None:
        self._threads = threads
        self._lock = threading.Lock()
        self._running = False
        self._abandoned = False
        self._started = False

    def run(
        self, sock: socket.socket, target: Pop3Target, tls: RecordingContext | None,
        timer: PhaseTimer, per_read: float,
    ) -> None:
        with self._lock:
            if self._abandoned:  # the probe gave up before a thread was free
                return
            self._running = self._started = True
            self._threads.started()
        try:
            _dialogue(sock, target, tls, timer, per_read)
        finally:
            with self._lock:
                self._running = False
                self._threads.ended(was_abandoned=self._abandoned)

    def abandon(self) -> bool:
        """Give up on the thread; True when it never started (the socket is still ours)."""
        with self._lock:
            never_started = not self._running and not self._started
            self._abandoned = True
            if self._running:
                self._threads.abandoned()
            return never_started


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


async def probe(target: Pop3Target, run: ProbeRun) -> None:
    sock = await open_socket(target.host, target.effective_port, run.timer)
    # A second descriptor for the same connection: shutdown() through it unblocks the
    # worker's recv whatever poplib or ssl did to the original socket object.
    killer = sock.dup()
    worker = _Worker(run.ctx.threads)
    try:
        if target.tls != "implicit":  # POP3S greets after the handshake, in the thread
            run.timer.enter(Phase.GREETING)
            await _greeted(sock)
        await anyio.to_thread.run_sync(
            worker.run, sock, target, run.tls, run.timer, run.timeout,
            abandon_on_cancel=True, limiter=run.ctx.pop3_worker(target.name),
        )
    except BaseException:
        if worker.abandon():
            sock.close()
        with contextlib.suppress(OSError):
            killer.shutdown(socket.SHUT_RDWR)
        raise
    finally:
        killer.close()
