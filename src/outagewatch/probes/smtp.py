"""SMTP probe: connect, banner (220), EHLO, STARTTLS + second EHLO, AUTH, QUIT.

The steps are an ``SmtpSession``, so that a probe that submits a mail reuses them.
No opportunistic TLS: ``tls: starttls`` fails when the server does not offer STARTTLS.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiosmtplib

from outagewatch.model import Phase, Result
from outagewatch.probes._common import ProbeFailure, mismatch, open_socket

if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence
    from email.message import EmailMessage

    from outagewatch.config import SmtpTarget, TlsMode
    from outagewatch.probes import ProbeRun
    from outagewatch.probes._common import PhaseTimer
    from outagewatch.tls import RecordingContext

PHASES: tuple[Phase, ...] = (
    Phase.DNS, Phase.CONNECT, Phase.TLS, Phase.GREETING, Phase.EHLO,
    Phase.STARTTLS, Phase.LOGIN, Phase.LOGOUT,
)

_MALFORMED = "Malformed SMTP response line: "  # aiosmtplib's words, then the server's line


class SmtpSession:
    """One SMTP connection, a method per step; each step enters its phase on the timer.

    ``send`` has no phase of its own yet: it runs in the phase in progress.
    Whatever happens, end with ``abort()``; after ``quit()`` it only releases the socket.
    """

    def __init__(
        self, client: aiosmtplib.SMTP, sock: socket.socket, tls_mode: TlsMode, timer: PhaseTimer
    ) -> None:
        self._client = client
        self._sock = sock
        self._handed = False  # once given to asyncio, the socket is its transport's to close
        self._tls_mode = tls_mode
        self._timer = timer

    async def connect(self) -> None:
        """Hand the socket to asyncio and read the banner."""
        self._handed = True
        await self._client.connect()

    async def ehlo_and_starttls(self) -> None:
        """EHLO; under ``starttls``, STARTTLS and EHLO again (never a plaintext fallback)."""
        self._timer.enter(Phase.EHLO)
        await self._client.ehlo()
        if self._tls_mode == "starttls":
            if not self._client.supports_extension("starttls"):
                raise ProbeFailure(Result.TLS, "server does not offer STARTTLS")
            self._timer.enter(Phase.STARTTLS)
            await self._client.starttls()
            await self._client.ehlo()

    async def login(self, username: str, password: str) -> None:
        self._timer.enter(Phase.LOGIN)
        if not self._client.supports_extension("auth"):
            raise ProbeFailure(Result.AUTH, "server does not offer AUTH")
        try:
            await self._client.login(username, password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise ProbeFailure(Result.AUTH, f"login refused: {exc.code} {exc.message}") from None

    async def send(
        self, message: EmailMessage, *, sender: str, recipients: Sequence[str]
    ) -> None:
        """MAIL, RCPT and DATA; a mail some recipient refused is a failure, not a delivery."""
        refused, _ = await self._client.send_message(
            message, sender=sender, recipients=recipients
        )
        if refused:
            address, reply = next(iter(refused.items()))
            raise ProbeFailure(
                Result.PROTOCOL, f"recipient {address} refused: {reply.code} {reply.message}"
            )

    async def quit(self) -> None:
        self._timer.enter(Phase.LOGOUT)
        await self._client.quit()

    def abort(self) -> None:
        """Drop the connection at once (no polite TLS shutdown with a bad peer); idempotent."""
        transport = self._client.transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        if self._client.transport is not None:
            self._client.close()
        elif not self._handed:
            self._sock.close()
        # Else the transport closes the socket itself, possibly a loop turn or a TLS
        # shutdown later: closing it here would free its descriptor to a new socket while
        # the old transport still holds the number ("File descriptor N is used by
        # transport", or worse, the new socket's reader removed).


async def open_session(
    host: str,
    port: int,
    tls_mode: TlsMode,
    *,
    ehlo_hostname: str,
    timer: PhaseTimer,
    tls: RecordingContext | None,
) -> SmtpSession:
    """Connect and read the banner: phases dns, connect, tls (implicit TLS only), greeting."""
    sock = await open_socket(host, port, timer)
    client = aiosmtplib.SMTP(
        hostname=host,
        sock=sock,
        use_tls=tls_mode == "implicit",
        start_tls=False,
        tls_context=tls,
        local_hostname=ehlo_hostname,
        timeout=None,  # the probe's total deadline bounds every step
    )
    session = SmtpSession(client, sock, tls_mode, timer)
    try:
        timer.enter(Phase.TLS if tls_mode == "implicit" else Phase.GREETING)
        connected_at = timer.current_since()
        try:
            await session.connect()
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == -1 and exc.message.startswith(_MALFORMED):  # no 'NNN text' banner
                raise mismatch("SMTP", exc.message[len(_MALFORMED):].encode()) from None
            raise
        if tls_mode == "implicit" and tls is not None and tls.handshake_done is not None:
            # one call did handshake and banner; split them at the recorded handshake end
            timer.enter(Phase.GREETING, at=max(tls.handshake_done, connected_at))
    except BaseException:
        session.abort()
        raise
    return session


async def probe(target: SmtpTarget, run: ProbeRun) -> None:
    session = await open_session(
        target.host, target.effective_port, target.tls,
        ehlo_hostname=target.ehlo_hostname, timer=run.timer, tls=run.tls,
    )
    try:
        await session.ehlo_and_starttls()
        if target.username:
            await session.login(target.username, target.secret() or "")
        await session.quit()
    finally:
        session.abort()
