"""The SMTP channel: messages as e-mails through the relay (``notify.smtp``), aiosmtplib.

Every message of a thread is one mail thread: the Message-ID derives from the thread (its
kind and id), the message's number and the installation's token (computed once, when the
message enters the outbox, so a retry carries the same id; a window named like an incident,
or a state lost and begun anew, never reuses one), In-Reply-To names the previous message
and References the first and the previous one. Each recipient is a lane of its own: one
mail per recipient, with every recipient in its To: header, so a recipient that defers
holds back only its own mails.
A delivery counts from the relay's 250 to DATA; QUIT comes after it is recorded.
Connection errors, timeouts, 4xx answers and anything that is no SMTP reply defer; only a
real 5xx reply or a refused relay login refuses.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
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
    from outagewatch.notify.queue import Letter

log = structlog.get_logger("outagewatch.notify")

QUIT_TIMEOUT = 5.0
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def message_id(thread: Thread, number: int, installation: str, domain: str) -> str:
    return f"<{thread.kind.value}.{thread.id.lower()}.{number}.{installation}@{domain}>"


def header_safe(value: str) -> str:
    """A header value on one line: a line break in a subject would end the header."""
    return _LINE_BREAKS.sub(" ", value).strip()


class SmtpChannel:
    name = "smtp"

    def __init__(self, notify: NotifyConfig, *, installation: str) -> None:
        self._notify = notify
        self._installation = installation
        relay = notify.smtp
        self._tls = (make_tls_context(verify=relay.tls_verify, ca_file=relay.ca_file)
                     if relay.tls != "none" else None)
        self._domain = email.utils.parseaddr(notify.sender)[1].rpartition("@")[2] or "localhost"

    def payloads(self, message: Message, *, created: float) -> dict[str, dict[str, Any]]:
        del created  # the Date header is the envelope's creation time, stored beside it
        def ident(number: int) -> str:
            return message_id(message.thread, number, self._installation, self._domain)

        root = ident(0)
        parent = ident(message.number - 1) if message.number else None
        common = {
            "to": list(message.to), "subject": header_safe(message.subject),
            "body": message.body,
            "message_id": ident(message.number),
            "in_reply_to": parent,
            "references": [] if parent is None else list(dict.fromkeys((root, parent))),
        }
        return {recipient: {**common, "rcpt": [recipient]} for recipient in message.to}

    def email(self, letter: Letter) -> EmailMessage:
        payload = letter.payload
        mail = EmailMessage()
        mail["From"] = self._notify.sender
        mail["To"] = ", ".join(payload["to"])
        mail["Subject"] = header_safe(payload["subject"])
        mail["Date"] = email.utils.format_datetime(datetime.fromtimestamp(letter.created, UTC))
        mail["Message-ID"] = payload["message_id"]
        if payload.get("in_reply_to"):
            mail["In-Reply-To"] = payload["in_reply_to"]
        if payload.get("references"):
            mail["References"] = " ".join(payload["references"])
        mail["Auto-Submitted"] = "auto-generated"
        mail.set_content(payload["body"])
        return mail

    async def deliver(self, letter: Letter) -> Delivery:
        recipients = list(letter.payload.get("rcpt") or letter.payload["to"])
        try:
            mail = self.email(letter)
        except (ValueError, TypeError, KeyError) as exc:  # a payload no mail can be made of
            return Refused(f"cannot make a mail of it: {type(exc).__name__}: {exc}")
        relay = self._notify.smtp
        client = aiosmtplib.SMTP(
            hostname=relay.host, port=relay.effective_port, use_tls=relay.tls == "implicit",
            start_tls=relay.tls == "starttls", tls_context=self._tls,
            username=relay.username, password=relay.secret(),
            timeout=relay.timeout.total_seconds(), local_hostname="outagewatch")
        try:
            outcome = await _send(client, mail, recipients, letter)
        except BaseException:
            client.close()
            raise
        if not isinstance(outcome, Delivered):
            client.close()
            return outcome

        async def close() -> None:
            try:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await client.quit(timeout=QUIT_TIMEOUT)
            finally:
                client.close()

        return Delivered(close=close)


async def _send(client: aiosmtplib.SMTP, mail: EmailMessage, recipients: list[str],  # noqa: PLR0911 - one return per outcome
                letter: Letter) -> Delivery:
    """Connect (TLS and login as configured) and hand the mail over, up to the 250 to DATA."""
    try:
        await client.connect()
        refused, _ = await client.send_message(mail, recipients=recipients)
    except aiosmtplib.SMTPAuthenticationError as exc:
        return Refused(f"relay refused our login: {exc.code} {exc.message}")
    except aiosmtplib.SMTPRecipientsRefused as exc:  # every recipient refused
        return _by_recipient(letter, {r.recipient: (r.code, r.message)
                                      for r in exc.recipients}, recipients)
    except aiosmtplib.SMTPResponseException as exc:
        if _permanent(exc.code):
            return Refused(f"relay refused the mail: {exc.code} {exc.message}")
        return Deferred(f"{exc.code} {exc.message}")
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return Deferred(f"{type(exc).__name__}: {exc}")
    if refused:
        return _by_recipient(letter, {r: (reply.code, reply.message)
                                      for r, reply in refused.items()}, recipients)
    return Delivered()


def _permanent(code: int) -> bool:
    """Only a real 5xx reply is a refusal; anything else (garbage, a dropped line, a reply
    code no SMTP server sends) is worth another try."""
    return 500 <= code < 600


def _by_recipient(letter: Letter, refused: dict[str, tuple[int, str]],
                  recipients: list[str]) -> Delivery:
    for recipient, (code, reply) in refused.items():
        if _permanent(code):
            log.error("recipient_refused", thread=letter.key.thread, recipient=recipient,
                      code=code, reply=reply)
    deferred = [r for r, (code, _) in refused.items() if not _permanent(code)]
    if deferred:
        return Deferred("some recipients deferred", {**letter.payload, "rcpt": deferred})
    if len(refused) == len(recipients):
        return Refused("every recipient was refused permanently: "
                       + "; ".join(f"{r}: {c} {m}" for r, (c, m) in refused.items()))
    return Delivered()


_: type[Channel] = SmtpChannel
