"""The SMTP channel: messages as e-mails through the relay (``notify.smtp``), aiosmtplib.

Every message of a thread is one mail thread: the Message-ID derives from the thread and
the message's number (computed once, when the message enters the outbox, so a retry carries
the same id), In-Reply-To names the previous message and References the first and the
previous one. Connection errors, timeouts and 4xx answers defer; 5xx answers and a refused
relay login refuse. When only some recipients are refused, the 4xx ones are deferred alone
and the 5xx ones dropped (and logged).
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import aiosmtplib
import structlog

from outagewatch.notify.channel import Channel, Deferred, Delivered, Delivery, Refused
from outagewatch.tls import make_tls_context

if TYPE_CHECKING:
    from outagewatch.config import NotifyConfig
    from outagewatch.core.render import Message, Thread
    from outagewatch.store import OutboxItem

log = structlog.get_logger("outagewatch.notify")


def message_id(thread: Thread, number: int, domain: str) -> str:
    return f"<{thread.id.lower()}.{number}@{domain}>"


class SmtpChannel:
    name = "smtp"

    def __init__(self, notify: NotifyConfig) -> None:
        self._notify = notify
        relay = notify.smtp
        self._tls = (make_tls_context(verify=relay.tls_verify, ca_file=relay.ca_file)
                     if relay.tls != "none" else None)
        self._domain = email.utils.parseaddr(notify.sender)[1].rpartition("@")[2] or "localhost"

    def payload(self, message: Message, *, created: float) -> dict[str, Any]:
        del created  # the Date header is the envelope's creation time, stored beside it
        root = message_id(message.thread, 0, self._domain)
        parent = message_id(message.thread, message.number - 1, self._domain) \
            if message.number else None
        return {
            "to": list(message.to), "subject": message.subject, "body": message.body,
            "message_id": message_id(message.thread, message.number, self._domain),
            "in_reply_to": parent,
            "references": [] if parent is None else list(dict.fromkeys((root, parent))),
        }

    def email(self, item: OutboxItem) -> EmailMessage:
        payload = item.payload
        mail = EmailMessage()
        mail["From"] = self._notify.sender
        mail["To"] = ", ".join(payload["to"])
        mail["Subject"] = payload["subject"]
        mail["Date"] = email.utils.format_datetime(datetime.fromtimestamp(item.created, UTC))
        mail["Message-ID"] = payload["message_id"]
        if payload.get("in_reply_to"):
            mail["In-Reply-To"] = payload["in_reply_to"]
        if payload.get("references"):
            mail["References"] = " ".join(payload["references"])
        mail["Auto-Submitted"] = "auto-generated"
        mail.set_content(payload["body"])
        return mail

    async def deliver(self, item: OutboxItem) -> Delivery:  # noqa: PLR0911 - one per outcome
        recipients = list(item.payload["to"])
        try:
            refused = await self._send(item, recipients)
        except aiosmtplib.SMTPAuthenticationError as exc:
            return Refused(f"relay refused our login: {exc.code} {exc.message}")
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500:
                return Deferred(f"{exc.code} {exc.message}")
            return Refused(f"relay refused the mail: {exc.code} {exc.message}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return Deferred(f"{type(exc).__name__}: {exc}")
        for recipient, (code, reply) in refused.items():
            if code >= 500:
                log.error("recipient_refused", thread=item.thread, recipient=recipient,
                          code=code, reply=reply)
        deferred = [r for r, (code, _) in refused.items() if 400 <= code < 500]
        if deferred:
            return Deferred("some recipients deferred", {**item.payload, "to": deferred})
        if refused and len(refused) == len(recipients):
            return Refused("every recipient was refused permanently")
        return Delivered(refused=tuple(refused))

    async def _send(self, item: OutboxItem, recipients: list[str]) -> dict[str, tuple[int, str]]:
        """Hand the mail to the relay; return the recipients it refused, with its answer."""
        relay = self._notify.smtp
        try:
            refused, _ = await aiosmtplib.send(
                self.email(item),
                recipients=recipients,
                hostname=relay.host,
                port=relay.effective_port,
                use_tls=relay.tls == "implicit",
                start_tls=relay.tls == "starttls",
                tls_context=self._tls,
                username=relay.username,
                password=relay.secret(),
                timeout=relay.timeout.total_seconds(),
                local_hostname="outagewatch",
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:  # every recipient refused
            return {r.recipient: (r.code, r.message) for r in exc.recipients}
        return {r: (reply.code, reply.message) for r, reply in refused.items()}


_: type[Channel] = SmtpChannel
