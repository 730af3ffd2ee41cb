"""The SMTP channel: messages as e-mails through the relays (``notify.smtp``), aiosmtplib.

Every message of a thread is one mail thread: the Message-ID derives from the thread (its
kind and id), the message's number and the installation's token (computed once, when the
message enters the outbox, so a retry carries the same id; a window named like an incident,
or a state lost and begun anew, never reuses one), In-Reply-To names the previous message
and References the first and the previous one. A List-Id names the platform and the list
(incident or info), so that mail rules can sort them. Each recipient is a lane of its own:
one mail per recipient, with every recipient in its To: header, so a recipient that defers
holds back only its own mails.

The relays are tried in order for each mail: one that defers, cannot be reached or refuses
our login passes the mail to the next. A delivery counts from a relay's 250 to DATA; QUIT
comes after it is recorded. When no relay took it, the mail is deferred if any relay
deferred it, and refused only when every relay refused it. Connection errors, timeouts, 4xx
answers and anything that is no SMTP reply defer; only a real 5xx reply or a refused relay
login refuses. The conversation (``Attempt.replies``) is kept for ``outagewatch notify test``.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import aiosmtplib
import structlog
from aiosmtplib.email import extract_sender, flatten_message

from outagewatch.model import one_line
from outagewatch.notify.channel import Channel, Deferred, Delivered, Delivery, Refused
from outagewatch.tls import make_tls_context

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Mapping

    from outagewatch.config import NotifyConfig, SmtpRelay
    from outagewatch.core.render import Message, Thread
    from outagewatch.notify.queue import Letter

log = structlog.get_logger("outagewatch.notify")

QUIT_TIMEOUT = 5.0
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")


def message_id(thread: Thread, number: int, installation: str, domain: str) -> str:
    return f"<{thread.kind.value}.{thread.id.lower()}.{number}.{installation}@{domain}>"


def list_id(platform: str, audience: str, domain: str) -> str:
    """RFC 2919: ``outagewatch eu incident <incident.eu.outagewatch.example.com>``."""
    label = ".".join(_LABEL_UNSAFE.sub("-", part) for part in (audience, platform))
    names = f"{header_safe(platform)} {header_safe(audience)}"
    return f"outagewatch {names} <{label}.outagewatch.{domain}>"


def header_safe(value: str) -> str:
    """A header value on one line: a line break in a subject would end the header."""
    return one_line(value)


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer of a relay: to ``step`` (connect, EHLO, STARTTLS, AUTH, MAIL, RCPT <to>,
    DATA), its code (None when there was no SMTP answer: a refused connection, a timeout)
    and its text."""

    step: str
    code: int | None
    text: str


@dataclass
class Attempt:
    """One relay's part in one delivery: what it answered and what came of it."""

    relay: str  # host:port
    replies: list[Reply] = field(default_factory=list)
    outcome: Delivery | None = None
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # recipient: the relay's answer


class SmtpChannel:
    name = "smtp"

    def __init__(self, notify: NotifyConfig, *, installation: str) -> None:
        self._notify = notify
        self._installation = installation
        self._relays = [(relay, make_tls_context(verify=relay.tls_verify, ca_file=relay.ca_file)
                         if relay.tls != "none" else None) for relay in notify.smtp]
        self._domain = email.utils.parseaddr(notify.sender)[1].rpartition("@")[2] or "localhost"

    @property
    def domain(self) -> str:
        return self._domain

    def payloads(self, message: Message, *, created: float) -> dict[str, dict[str, Any]]:
        del created  # the Date header is the envelope's creation time, stored beside it
        def ident(number: int) -> str:
            return message_id(message.thread, number, self._installation, self._domain)

        root = ident(0)
        parent = ident(message.number - 1) if message.number else None
        common: dict[str, Any] = {
            "to": list(message.to), "subject": header_safe(message.subject),
            "body": message.body,
            "message_id": ident(message.number),
            "in_reply_to": parent,
            "references": [] if parent is None else list(dict.fromkeys((root, parent))),
        }
        if message.platform and message.audience:
            common["list_id"] = list_id(message.platform, message.audience, self._domain)
        return {recipient: {**common, "rcpt": [recipient]} for recipient in message.to}

    def rethread(self, payload: Mapping[str, Any], *, parent: int) -> Mapping[str, Any]:
        """In-Reply-To and References naming message ``parent`` (the ids differ only in
        the number: ``<kind.id.NUMBER.installation@domain>``)."""
        local, _, domain = str(payload["message_id"]).strip("<>").rpartition("@")
        head, _, installation = local.rsplit(".", 2)
        answered = f"<{head}.{parent}.{installation}@{domain}>"
        root = f"<{head}.0.{installation}@{domain}>"
        return {**payload, "in_reply_to": answered,
                "references": list(dict.fromkeys((root, answered)))}

    def email(self, letter: Letter) -> EmailMessage:
        return self.compose(letter.payload, created=letter.created)

    def compose(self, payload: Mapping[str, Any], *, created: float) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self._notify.sender
        mail["To"] = ", ".join(payload["to"])
        mail["Subject"] = header_safe(payload["subject"])
        mail["Date"] = email.utils.format_datetime(datetime.fromtimestamp(created, UTC))
        mail["Message-ID"] = payload["message_id"]
        if payload.get("in_reply_to"):
            mail["In-Reply-To"] = payload["in_reply_to"]
        if payload.get("references"):
            mail["References"] = " ".join(payload["references"])
        if payload.get("list_id"):  # payloads stored before List-Id existed go without
            mail["List-Id"] = header_safe(payload["list_id"])
        mail["Auto-Submitted"] = "auto-generated"
        mail.set_content(payload["body"])
        return mail

    async def deliver(self, letter: Letter) -> Delivery:
        recipients = list(letter.payload.get("rcpt") or letter.payload["to"])
        try:
            mail = self.email(letter)
        except (ValueError, TypeError, KeyError) as exc:  # a payload no mail can be made of
            return Refused(f"cannot make a mail of it: {type(exc).__name__}: {exc}")
        outcome, attempts = await self.send(mail, recipients)
        for attempt in attempts:
            if isinstance(attempt.outcome, Delivered):
                log.info("relay_took_mail", relay=attempt.relay, thread=letter.key.thread,
                         number=letter.key.number, lane=letter.key.lane)
            else:
                error = getattr(attempt.outcome, "error", "")
                log.warning("relay_did_not_take_mail", relay=attempt.relay, error=error,
                            refused=isinstance(attempt.outcome, Refused),
                            thread=letter.key.thread, number=letter.key.number,
                            lane=letter.key.lane)
        if isinstance(outcome, Deferred) and outcome.payload is not None:
            outcome = Deferred(outcome.error, {**letter.payload, **outcome.payload})
        return outcome

    async def send(self, mail: EmailMessage,
                   recipients: list[str]) -> tuple[Delivery, list[Attempt]]:
        """Hand ``mail`` to the first relay that takes it; what each relay tried answered."""
        attempts: list[Attempt] = []
        left = list(recipients)
        for relay, tls in self._relays:
            attempt = Attempt(relay.address)
            attempts.append(attempt)
            attempt.outcome = await _through(relay, tls, mail, left, attempt)
            if isinstance(attempt.outcome, Delivered):
                return attempt.outcome, attempts
            if isinstance(attempt.outcome, Deferred) and attempt.outcome.payload is not None:
                left = list(attempt.outcome.payload["rcpt"])  # the others took it already
        return _combined([a.outcome for a in attempts if a.outcome is not None], left), attempts


def _combined(outcomes: list[Delivery], left: list[str]) -> Delivery:
    """No relay took it: deferred if any deferred, refused only when every one refused."""
    refusals = [o for o in outcomes if isinstance(o, Refused)]
    if len(refusals) == len(outcomes):
        if len(refusals) == 1:
            return refusals[0]
        return Refused("every relay refused it: " + "; ".join(o.error for o in refusals))
    deferrals = [o for o in outcomes if isinstance(o, Deferred)]
    narrowed = next((o.payload for o in reversed(deferrals) if o.payload is not None), None)
    error = deferrals[-1].error if len(outcomes) == 1 else "no relay took it: " + "; ".join(
        getattr(o, "error", "") for o in outcomes)
    return Deferred(error, None if narrowed is None else {"rcpt": left})


async def _through(relay: SmtpRelay, tls: ssl.SSLContext | None, mail: EmailMessage,
                   recipients: list[str], attempt: Attempt) -> Delivery:
    client = aiosmtplib.SMTP(
        hostname=relay.host, port=relay.effective_port, use_tls=relay.tls == "implicit",
        start_tls=False, tls_context=tls, timeout=relay.timeout.total_seconds(),
        local_hostname="outagewatch")
    try:
        outcome = await _converse(client, relay, mail, recipients, attempt)
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


class _Transcript:
    """Runs each step of the conversation and keeps the relay's answer to it."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.step = "connect"

    async def __call__(self, step: str,
                       command: Awaitable[aiosmtplib.SMTPResponse]) -> None:
        self.step = step
        response = await command
        self.replies.append(Reply(step, response.code, response.message))


async def _hello(client: aiosmtplib.SMTP, relay: SmtpRelay, say: _Transcript) -> None:
    """Connect, EHLO, STARTTLS and login, as the relay is configured."""
    await say("connect", client.connect())
    await say("EHLO", client.ehlo())
    if relay.tls == "starttls":
        await say("STARTTLS", client.starttls())
        await say("EHLO", client.ehlo())
    if relay.username:  # the answer only: the password is never in a reply
        await say("AUTH", client.login(relay.username, relay.secret() or ""))


async def _converse(client: aiosmtplib.SMTP, relay: SmtpRelay,  # noqa: PLR0911 - one return per outcome
                    mail: EmailMessage, recipients: list[str], attempt: Attempt) -> Delivery:
    """The conversation, step by step (each answer kept), up to the 250 to DATA."""
    say = _Transcript(attempt.replies)
    refused: dict[str, tuple[int, str]] = {}
    try:
        await _hello(client, relay, say)
        sender = extract_sender(mail) or ""
        utf8 = not (sender + "".join(recipients)).isascii()  # an address such as jörg@...
        if utf8 and not client.supports_extension("smtputf8"):
            return Refused(f"relay {relay.address} does not offer SMTPUTF8, which a non-ASCII "
                           "address needs")
        options, encoding = (["SMTPUTF8"], "utf-8") if utf8 else ([], "ascii")
        await say("MAIL", client.mail(sender, options=options, encoding=encoding))
        for recipient in recipients:
            try:
                await say(f"RCPT {recipient}", client.rcpt(recipient, encoding=encoding))
            except aiosmtplib.SMTPRecipientRefused as exc:
                say.replies.append(Reply(say.step, exc.code, exc.message))
                refused[recipient] = (exc.code, exc.message)
        attempt.refused = {r: f"{c} {m}" for r, (c, m) in refused.items()}
        if len(refused) == len(recipients):
            return _by_recipient(refused, recipients)
        # 7 bit: any relay takes it, with or without 8BITMIME (SMTPUTF8 headers are 8 bit)
        await say("DATA", client.data(flatten_message(mail, utf8=utf8, cte_type="7bit")))
    except aiosmtplib.SMTPAuthenticationError as exc:
        say.replies.append(Reply(say.step, exc.code, exc.message))
        return Refused(f"relay {relay.address} refused our login: {exc.code} {exc.message}")
    except aiosmtplib.SMTPResponseException as exc:
        say.replies.append(Reply(say.step, exc.code, exc.message))
        if _permanent(exc.code):
            return Refused(f"relay {relay.address} refused the mail at "
                           f"{say.step.split()[0]}: {exc.code} {exc.message}")
        return Deferred(f"relay {relay.address}: {exc.code} {exc.message}")
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        say.replies.append(Reply(say.step, None, f"{type(exc).__name__}: {exc}"))
        return Deferred(f"relay {relay.address}: {type(exc).__name__}: {exc}")
    attempt.accepted = [r for r in recipients if r not in refused]
    if refused:
        return _by_recipient(refused, recipients)
    return Delivered()


def _permanent(code: int) -> bool:
    """Only a real 5xx reply is a refusal; anything else (garbage, a dropped line, a reply
    code no SMTP server sends) is worth another try."""
    return 500 <= code < 600


def _by_recipient(refused: dict[str, tuple[int, str]], recipients: list[str]) -> Delivery:
    for recipient, (code, reply) in refused.items():
        if _permanent(code):
            log.error("recipient_refused", recipient=recipient, code=code, reply=reply)
    deferred = [r for r, (code, _) in refused.items() if not _permanent(code)]
    if deferred:
        return Deferred("some recipients deferred", {"rcpt": deferred})
    if len(refused) == len(recipients):
        return Refused("every recipient was refused permanently: "
                       + "; ".join(f"{r}: {c} {m}" for r, (c, m) in refused.items()))
    return Delivered()


_: type[Channel] = SmtpChannel
