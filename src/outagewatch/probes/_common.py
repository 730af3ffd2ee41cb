"""What every probe shares: phase timing, error mapping, timed DNS + TCP connect."""

from __future__ import annotations

import asyncio
import email.policy
import errno
import re
import socket
import ssl
import time
from email.parser import BytesHeaderParser

import aiohttp

from outagewatch.model import Phase, Result


class ProbeFailure(Exception):
    """A probe's own verdict (bad status, AUTH refused, ...), raised inside a probe."""

    def __init__(self, result: Result, detail: str, *, phase: Phase | None = None) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail
        self.phase = phase


# What other servers say first (or answer), to name the server a wrong port reached.
_SIGNATURES: tuple[tuple[re.Pattern[bytes], str, str], ...] = (
    (re.compile(rb"^\* (?:OK|PREAUTH|BYE)\b", re.IGNORECASE), "IMAP", "an IMAP server"),
    (re.compile(rb"^(?:\+OK|-ERR)\b", re.IGNORECASE), "POP3", "a POP3 server"),
    (re.compile(rb"^[2-5]\d\d(?:[ -]|$)"), "SMTP", "an SMTP server"),
    (re.compile(rb"^HTTP/\d"), "HTTP", "an HTTP server"),
    (re.compile(rb"^SSH-\d"), "SSH", "an SSH server"),
)


def other_protocol(line: bytes, expected: str) -> str | None:
    """Which server ``line`` sounds like, when it is not the ``expected`` protocol's."""
    for pattern, name, server in _SIGNATURES:
        if name != expected and pattern.match(line.lstrip()):
            return server
    return None


def printable(line: bytes, limit: int = 60) -> str:
    """A server's line, short and printable (no terminal escapes into logs)."""
    text = line.decode("utf-8", "replace").strip()
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def mismatch(expected: str, line: bytes, *, what: str = "greeting") -> ProbeFailure:
    """The failure of a port that answers another protocol (or garbage):
    ``expected an IMAP greeting, got '+OK ...': a POP3 server?``."""
    article = "an" if expected[0] in "AEFHILMNORSX" else "a"
    detail = f"expected {article} {expected} {what}, got {printable(line)!r}"
    server = other_protocol(line, expected)
    return ProbeFailure(Result.PROTOCOL, f"{detail}: {server}?" if server else detail)


class PhaseTimer:
    """Checkpoints on the monotonic clock; knows the phase in progress when a deadline hits.

    Safe to call from one worker thread while the loop reads it: each update is a single
    attribute or dict store.
    """

    __slots__ = ("_clock", "_mark", "current", "durations")

    def __init__(self) -> None:
        self._clock = time.monotonic
        self.current: Phase | None = None
        self._mark = self._clock()
        self.durations: dict[Phase, float] = {}

    def enter(self, phase: Phase, *, at: float | None = None) -> None:
        """Close the current phase (at ``at`` or now) and start ``phase``."""
        now = self._clock() if at is None else at
        if self.current is not None:
            self.add(self.current, now - self._mark)
        self.current, self._mark = phase, now

    def current_since(self) -> float:
        """When the phase in progress started."""
        return self._mark

    def add(self, phase: Phase, seconds: float) -> None:
        self.durations[phase] = self.durations.get(phase, 0.0) + max(0.0, seconds)

    def finish(self) -> None:
        if self.current is not None:
            self.add(self.current, self._clock() - self._mark)
        self.current = None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it (aiosmtplib wraps ssl errors in SMTPConnectError)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 5:
        seen.append(current)
        current = current.__cause__
    return seen


def classify(exc: BaseException) -> Result:  # noqa: PLR0911 - one exit per class reads best
    """Map an exception from any client library to the bounded error class."""
    chain = _chain(exc)
    if any(isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError) for e in chain):
        return Result.PROTOCOL  # the peer hung up mid-handshake: a closed connection, not TLS
    if any(isinstance(e, ssl.SSLError | ssl.CertificateError) for e in chain):
        return Result.TLS
    if isinstance(exc, ProbeFailure):
        return exc.result
    if isinstance(exc, aiohttp.TooManyRedirects):
        return Result.STATUS
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return Result.DNS
    if isinstance(exc, ssl.SSLError | ssl.CertificateError | aiohttp.ClientSSLError):
        return Result.TLS
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
        exc.os_error, ConnectionResetError
    ):
        return Result.REFUSED
    if isinstance(exc, TimeoutError):
        return Result.TIMEOUT
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError)
        and exc.errno in {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}
    ):
        return Result.REFUSED
    return Result.PROTOCOL


def describe(exc: BaseException) -> str:
    """A short, single-line reason; the exception type when it has no text."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        reason = os_error.strerror or str(os_error) or type(os_error).__name__
        return f"{type(exc).__name__}: {exc.host}:{exc.port}: {reason}"[:300]
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}"[:300] if text else name


async def open_socket(host: str, port: int, timer: PhaseTimer) -> socket.socket:
    """Resolve (phase dns) and connect (phase connect); return a connected non-blocking socket.

    Tries each resolved address in turn, like a user's client, and raises the last error.
    """
    loop = asyncio.get_running_loop()
    timer.enter(Phase.DNS)
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    timer.enter(Phase.CONNECT)
    last: OSError | None = None
    for family, kind, proto, _name, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)  # noqa: FBT003 - stdlib signature
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
        else:
            return sock
    assert last is not None  # getaddrinfo never returns an empty list
    raise last


def header_value(header: bytes, name: str) -> str | None:
    """Header ``name`` of a message's header block as it was sent: no RFC 2047 decoding, so
    an encoded word never turns into something it is not; None when the header is missing
    or given more than once (which of them would count?)."""
    values = BytesHeaderParser(policy=email.policy.compat32).parsebytes(header).get_all(name)
    return str(values[0]) if values is not None and len(values) == 1 else None
