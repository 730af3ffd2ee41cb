"""Issue 14: the mail-loop probe, against a real Postfix delivering to a real Dovecot."""

from __future__ import annotations

import asyncio
import uuid
from email.message import EmailMessage

import aiosmtplib
from tests.helpers.postfix import MAILBOX

from outagewatch.probes._common import PhaseTimer
from outagewatch.probes.imap import ImapSession


async def _find(dovecot, token: str, *, within: float = 10.0) -> list[int]:
    """The UIDs of INBOX mails whose probe header is ``token``, once there are any."""
    session = await ImapSession.connect("127.0.0.1", dovecot.imap, "none", timer=PhaseTimer(),
                                        tls=None)
    try:
        await session.login(dovecot.user, dovecot.password)
        await session.select("INBOX")
        for _ in range(int(within / 0.05)):
            uids = await session.uid_search(f'HEADER X-Outagewatch-Probe "{token}"')
            if uids:
                return uids
            await asyncio.sleep(0.05)
            await session.select("INBOX")
        return []
    finally:
        await session.close()


async def test_the_fixture_delivers_submitted_mail_to_dovecot(mailloop_servers):
    """Postfix accepts a mail on its port and hands it to Dovecot over LMTP: it is then
    found over IMAP."""
    token = uuid.uuid4().hex
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.test", MAILBOX, "hi"
    message["X-Outagewatch-Probe"] = token
    message.set_content("hello")
    await aiosmtplib.send(message, hostname="127.0.0.1", port=mailloop_servers.postfix.port,
                          start_tls=False, local_hostname="client.test")
    assert len(await _find(mailloop_servers.dovecot, token)) == 1
