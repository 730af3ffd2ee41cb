"""aiosmtpd in the test's own event loop, on port 0 (its threaded Controller cannot do that)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

USER = "probe"
PASSWORD = "smtp-Pa55word"


def _authenticate(
    server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
    )
    # handled=False makes aiosmtpd answer 535; the default (True) would answer nothing at all
    return AuthResult(success=ok, handled=False)


@dataclass
class Sink:
    """Collects what the server accepted."""

    messages: list[Envelope] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.messages.append(envelope)
        return "250 OK"


@dataclass
class SmtpServer:
    port: int
    implicit_port: int
    sink: Sink
    servers: list[asyncio.Server]

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()


async def start_smtpd(tls: ssl.SSLContext, *, offer_starttls: bool = True) -> SmtpServer:
    """Port ``port``: plain with STARTTLS (AUTH only after it); ``implicit_port``: SMTPS."""
    loop = asyncio.get_running_loop()
    sink = Sink()

    def factory(*, implicit: bool) -> SMTP:
        return SMTP(
            sink,
            hostname="mx.test",
            tls_context=None if implicit or not offer_starttls else tls,
            require_starttls=False,
            authenticator=_authenticate,
            auth_require_tls=not implicit and offer_starttls,
        )

    plain = await loop.create_server(lambda: factory(implicit=False), "127.0.0.1", 0)
    implicit = await loop.create_server(
        lambda: factory(implicit=True), "127.0.0.1", 0, ssl=tls
    )
    return SmtpServer(
        port=plain.sockets[0].getsockname()[1],
        implicit_port=implicit.sockets[0].getsockname()[1],
        sink=sink,
        servers=[plain, implicit],
    )
