"""A relay for the end-to-end tests: aiosmtpd in the test's loop, keeping what it got."""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message
from typing import Any


class Relay:
    """An aiosmtpd handler: every accepted mail as (recipients, parsed message)."""

    def __init__(self) -> None:
        self.mails: list[tuple[tuple[str, ...], Message]] = []
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.mails.append((tuple(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"

    def kinds(self) -> list[str]:
        """The mails' states from their subjects: OPEN, UPDATE, ANNOUNCEMENT, ..."""
        return [str(m["Subject"]).split("[")[1].split("]")[0] for _, m in self.mails]
