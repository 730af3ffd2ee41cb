"""aiosmtpd relays a test scripts: they accept mail, or answer what the test sets at MAIL or
DATA, and check a login's password; started on demand, each on a free port."""

from __future__ import annotations

import asyncio
import contextlib
from email import message_from_bytes
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from email.message import Message


class ScriptedRelay:
    def __init__(self) -> None:
        self.received: list[tuple[tuple[str, ...], Message]] = []
        self.mail = ""  # a reply to MAIL FROM instead of accepting it
        self.data = "250 OK"  # the reply to DATA; only a 250 keeps the mail
        self.port = 0

    @property
    def mails(self) -> list[tuple[tuple[str, ...], Message]]:
        return self.received

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any,  # noqa: N802
                          address: str, options: Any) -> str:
        if self.mail:
            return self.mail
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.data.startswith("250"):
            self.received.append((tuple(envelope.rcpt_tos),
                                  message_from_bytes(envelope.content)))
        return self.data


@contextlib.asynccontextmanager
async def scripted_relays(secret: str) -> AsyncIterator[Callable[[], Awaitable[ScriptedRelay]]]:
    """``start()`` a relay (login with any user and ``secret``); all stop at the end."""
    servers: list[asyncio.Server] = []

    def login(server: Any, session: Any, envelope: Any, mechanism: Any,
              auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == secret.encode()
        return AuthResult(success=ok, handled=False)

    async def start() -> ScriptedRelay:
        relay = ScriptedRelay()
        server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(relay, hostname="relay.test", authenticator=login,
                         auth_require_tls=False), "127.0.0.1", 0)
        relay.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return relay

    try:
        yield start
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
