"""SMTP probe: connect, banner (220), EHLO, STARTTLS + second EHLO, AUTH, QUIT.

No opportunistic TLS: ``tls: starttls`` fails when the server does not offer STARTTLS.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiosmtplib

from outagewatch.model import Phase, Result
from outagewatch.probes._common import ProbeFailure, open_socket

if TYPE_CHECKING:
    from outagewatch.config import SmtpTarget
    from outagewatch.probes import ProbeRun


async def probe(target: SmtpTarget, run: ProbeRun) -> None:
    sock = await open_socket(target.host, target.effective_port, run.timer)
    client = aiosmtplib.SMTP(
        hostname=target.host,
        sock=sock,
        use_tls=target.tls == "implicit",
        start_tls=False,
        tls_context=run.tls,
        local_hostname=target.ehlo_hostname,
        timeout=None,  # the probe's total deadline bounds every step
    )
    try:
        await _dialogue(client, target, run)
    except BaseException:
        # On failure, drop the connection at once; no polite TLS shutdown with a bad peer.
        transport = client.transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        raise
    finally:
        if client.transport is None:
            sock.close()  # never handed over to a transport (or already closed by QUIT)
        else:
            client.close()


async def _dialogue(client: aiosmtplib.SMTP, target: SmtpTarget, run: ProbeRun) -> None:
    timer, tls = run.timer, run.tls
    timer.enter(Phase.TLS if target.tls == "implicit" else Phase.GREETING)
    connected_at = timer.current_since()
    await client.connect()
    if target.tls == "implicit" and tls is not None and tls.handshake_done is not None:
        # one call did handshake and banner; split them at the recorded handshake end
        timer.enter(Phase.GREETING, at=max(tls.handshake_done, connected_at))
    timer.enter(Phase.EHLO)
    await client.ehlo()
    if target.tls == "starttls":
        if not client.supports_extension("starttls"):
            raise ProbeFailure(Result.TLS, "server does not offer STARTTLS")
        timer.enter(Phase.STARTTLS)
        await client.starttls()
        await client.ehlo()
    if target.username:
        timer.enter(Phase.LOGIN)
        if not client.supports_extension("auth"):
            raise ProbeFailure(Result.AUTH, "server does not offer AUTH")
        try:
            await client.login(target.username, target.secret() or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            reason = f"login refused: {exc.code} {exc.message}"
            raise ProbeFailure(Result.AUTH, reason) from None
    timer.enter(Phase.LOGOUT)
    await client.quit()
