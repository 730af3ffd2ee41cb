"""Drains the outbox through the relay (``notify.smtp``) with aiosmtplib.

Connection errors, timeouts and 4xx answers are retried with exponential backoff and
jitter; 5xx answers and refused authentication are configuration errors: logged, counted,
and the mail is marked failed instead of being retried forever. When only some recipients
are refused, the 4xx ones are retried alone and the 5xx ones dropped. A retry carries the
same Message-ID. Only the oldest pending mail of an incident is sent, so threads stay in
order.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING

import aiosmtplib
import structlog

from outagewatch.probes._common import make_tls_context

if TYPE_CHECKING:
    from outagewatch.clock import Clock
    from outagewatch.config import NotifyConfig
    from outagewatch.metrics import Metrics
    from outagewatch.store import OutboxMail, Store

log = structlog.get_logger("outagewatch.mailer")

MAX_NAP = 5.0


class Mailer:
    def __init__(
        self,
        *,
        store: Store,
        notify: NotifyConfig,
        clock: Clock,
        metrics: Metrics,
        backoff: tuple[float, float] = (5.0, 300.0),
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._notify = notify
        self._clock = clock
        self._metrics = metrics
        self._backoff = backoff
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._wake = asyncio.Event()
        relay = notify.smtp
        self._tls = (make_tls_context(verify=relay.tls_verify, ca_file=relay.ca_file)
                     if relay.tls != "none" else None)

    def reconfigure(self, notify: NotifyConfig) -> None:
        self._notify = notify
        relay = notify.smtp
        self._tls = (make_tls_context(verify=relay.tls_verify, ca_file=relay.ca_file)
                     if relay.tls != "none" else None)

    def poke(self) -> None:
        """New mail in the outbox: look now rather than at the next nap's end."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.send_due()
            now = self._clock.now().timestamp()
            upcoming = self._store.next_attempt()
            nap = MAX_NAP if upcoming is None else min(MAX_NAP, max(0.0, upcoming - now))
            waiter = asyncio.ensure_future(self._wake.wait())
            sleeper = asyncio.ensure_future(self._clock.sleep_until(
                self._clock.monotonic() + nap))
            try:
                await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                sleeper.cancel()

    async def send_due(self) -> int:
        """Send every mail that is due now; return how many were handed to the relay."""
        sent = 0
        while due := self._store.due_mails(self._clock.now().timestamp()):
            progress = False
            for mail in due:
                if await self._deliver(mail):
                    sent += 1
                    progress = True
            if not progress:
                break
        self._update_gauges()
        return sent

    def _update_gauges(self) -> None:
        pending, oldest = self._store.outbox_stats(self._clock.now().timestamp())
        self._metrics.outbox_pending.set(pending)
        self._metrics.outbox_oldest_age.set(oldest)

    def _message(self, mail: OutboxMail) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._notify.sender
        message["To"] = ", ".join(mail.recipients)
        message["Subject"] = mail.subject
        message["Date"] = email.utils.format_datetime(datetime.fromtimestamp(mail.created, UTC))
        message["Message-ID"] = mail.message_id
        if mail.in_reply_to:
            message["In-Reply-To"] = mail.in_reply_to
        if mail.references:
            message["References"] = " ".join(mail.references)
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(mail.body)
        return message

    async def _deliver(self, mail: OutboxMail) -> bool:
        """One attempt; True when the relay took the mail for every remaining recipient."""
        now = self._clock.now().timestamp()
        try:
            refused = await self._send(mail)
        except aiosmtplib.SMTPAuthenticationError as exc:
            return self._fail(mail, f"relay refused our login: {exc.code} {exc.message}")
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500:
                return self._retry(mail, mail.recipients, f"{exc.code} {exc.message}", now)
            return self._fail(mail, f"relay refused the mail: {exc.code} {exc.message}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return self._retry(mail, mail.recipients, f"{type(exc).__name__}: {exc}", now)
        return self._settle(mail, refused, now)

    async def _send(self, mail: OutboxMail) -> dict[str, tuple[int, str]]:
        """Hand the mail to the relay; return the recipients it refused, with its answer."""
        relay = self._notify.smtp
        try:
            refused, _ = await aiosmtplib.send(
                self._message(mail),
                recipients=list(mail.recipients),
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

    def _settle(self, mail: OutboxMail, refused: dict[str, tuple[int, str]],
                now: float) -> bool:
        temporary = tuple(r for r, (code, _) in refused.items() if 400 <= code < 500)
        for recipient, (code, reply) in refused.items():
            if code >= 500:
                log.error("recipient_refused", incident_id=mail.incident_id,
                          recipient=recipient, code=code, reply=reply)
        if temporary:
            return self._retry(mail, temporary, "some recipients deferred", now)
        if refused and len(refused) == len(mail.recipients):
            return self._fail(mail, "every recipient was refused permanently")
        with self._store.transaction():
            self._store.mark_sent(mail.id, now)
        self._metrics.notifications.labels(mail.kind, "sent").inc()
        log.info("mail_sent", incident_id=mail.incident_id, kind=mail.kind,
                 number=mail.number, message_id=mail.message_id,
                 recipients=len(mail.recipients))
        return True

    def _retry(self, mail: OutboxMail, recipients: tuple[str, ...], error: str,
               now: float) -> bool:
        base, ceiling = self._backoff
        delay = min(ceiling, base * 2 ** mail.attempts) * self._rng.uniform(0.5, 1.0)
        with self._store.transaction():
            self._store.mark_retry(mail.id, recipients=recipients, at=now + delay, error=error)
        self._metrics.notifications.labels(mail.kind, "retry").inc()
        log.warning("mail_deferred", incident_id=mail.incident_id, kind=mail.kind,
                    error=error, retry_in=round(delay, 1), attempt=mail.attempts + 1)
        return False

    def _fail(self, mail: OutboxMail, error: str) -> bool:
        with self._store.transaction():
            self._store.mark_failed(mail.id, error)
        self._metrics.notifications.labels(mail.kind, "failed").inc()
        log.error("mail_failed", incident_id=mail.incident_id, kind=mail.kind, error=error,
                  note="a configuration error: fix the relay settings; not retried")
        return False
