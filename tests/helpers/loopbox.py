"""A mailbox of one test on the session's Postfix and Dovecot (the ``loop`` fixture).

The servers are shared by the whole session; a mailbox is not. Each test gets a fresh
``boxN@example.test``, and its hold and junk rules match its own mail only, so a mail one test
released from the queue can never arrive in another's inbox, and no test sees another's
leftovers.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import aiosmtplib
from tests.helpers.postfix import DOMAIN
from tests.helpers.targets import make_target

from outagewatch.probes._common import PhaseTimer
from outagewatch.probes.imap import ImapSession
from outagewatch.probes.mailloop import HEADER

if TYPE_CHECKING:
    from tests.helpers.dovecot import Dovecot
    from tests.helpers.postfix import Postfix

BOXES = tuple(f"box{n}" for n in range(1, 501))  # Dovecot's users for the loop tests
_numbers = itertools.count(1)


@dataclass
class LoopBox:
    dovecot: Dovecot
    postfix: Postfix
    user: str
    password: str

    @classmethod
    def new(cls, dovecot: Dovecot, postfix: Postfix) -> LoopBox:
        number = next(_numbers)
        assert number <= len(BOXES), "more loop tests than mailboxes: raise BOXES"
        return cls(dovecot, postfix, BOXES[number - 1], dovecot.password)

    @property
    def address(self) -> str:
        return f"{self.user}@{DOMAIN}"

    # -- the target --------------------------------------------------------------------------

    def target(self, **fields: Any) -> Any:
        """A loop target submitting to this mailbox and fetching from it, plain connections
        (``fetch={...}``, ``submit={...}`` override their keys)."""
        fetch = {"host": "127.0.0.1", "port": self.dovecot.imap, "tls": "none",
                 "username": self.user, "password": self.password, **fields.pop("fetch", {})}
        submit = {"host": "127.0.0.1", "port": self.postfix.port, "tls": "none",
                  "ehlo_hostname": "probe.test", **fields.pop("submit", {})}
        return make_target(**{"name": "loop-test", "type": "mailloop", "submit": submit,
                              "fetch": fetch, "from": "outagewatch@example.test",
                              "to": self.address, **fields})

    def pop3_target(self, **fields: Any) -> Any:
        """The same, fetching over POP3 (plain)."""
        fetch = {"type": "pop3", "port": self.dovecot.pop3, **fields.pop("fetch", {})}
        return self.target(fetch=fetch, **fields)

    # -- the MTA -----------------------------------------------------------------------------

    def hold(self) -> None:
        self.postfix.hold(self.address)

    def junk(self) -> None:
        self.postfix.junk(self.address)

    def normal(self) -> None:
        self.postfix.normal(self.address)

    def release(self) -> None:
        self.postfix.release(self.address)

    # -- the mailbox -------------------------------------------------------------------------

    async def inbox(self, folder: str = "INBOX") -> dict[int, str | None]:
        """UID -> probe header of every mail in ``folder`` now."""
        session = await ImapSession.connect("127.0.0.1", self.dovecot.imap, "none",
                                            timer=PhaseTimer(), tls=None)
        try:
            await session.login(self.user, self.password)
            await session.select(folder)
            found = {}
            for uid in await session.uid_search("ALL"):
                session.fresh_budget()  # a mailbox of thousands: each read bounded
                found[uid] = await session.uid_fetch_header(uid, HEADER)
            return found
        finally:
            await session.close()

    async def wait_for(self, predicate: Any, what: str, folder: str = "INBOX",
                       within: float = 10.0) -> dict[int, str | None]:
        """The folder's mails once ``predicate`` holds for them."""
        for _ in range(int(within / 0.05)):
            mails = await self.inbox(folder)
            if predicate(mails):
                return mails
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what}: not within {within} s")

    async def deliver(self, header: str | None, folder: str = "INBOX", *,
                      subject: str | None = None) -> None:
        """A mail through Postfix into this mailbox, with ``header`` as its probe header
        (None: a foreign mail without one); back once it is there."""
        message = EmailMessage()
        message["From"], message["To"] = "someone@example.org", self.address
        message["Subject"] = subject or f"foreign {uuid.uuid4().hex}"
        if header is not None:
            message[HEADER] = header
        message.set_content("not the probe's")
        before = len(await self.inbox(folder))
        await aiosmtplib.send(message, hostname="127.0.0.1", port=self.postfix.port,
                              start_tls=False, local_hostname="client.test")
        await self.wait_for(lambda mails: len(mails) > before, "the mail arrives", folder)

    async def drop(self, count: int, header: str | None) -> None:
        """``count`` foreign mails written straight into the maildir (faster than SMTP for
        thousands), with ``header`` as their probe header (None: without one); back once
        Dovecot has indexed them, as mails delivered before what comes next."""
        self.dovecot.drop(self.user, count, header=(f"{HEADER}: {header}" if header
                                                   else None))
        session = await ImapSession.connect("127.0.0.1", self.dovecot.imap, "none",
                                            timer=PhaseTimer(), tls=None)
        try:
            await session.login(self.user, self.password)
            await session.select("INBOX")
        finally:
            await session.close()
