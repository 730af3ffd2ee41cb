"""Drains the outbox through the channels: in order per lane, with backoff and jitter.

Only the next letter of a lane (channel, thread, recipient) is tried, so a thread arrives
in order for everybody, and a recipient that defers holds back only itself. A deferred
attempt is retried after ``base * 2 ** attempts`` (capped, with jitter); a refused one is
marked failed (kept, listed, counted in ``outagewatch_mails_failed``: a configuration
error to fix), never retried blindly; ``resend`` sends it again once the operator fixed the
cause. An UPDATE never delivered when the RESOLVED of its lane is queued is superseded (see
``queue.py``). A delivery is recorded the moment the other side accepted it, before the polite
end of the conversation. The drainer survives whatever a channel throws; on shutdown it
finishes the attempt in progress rather than cutting a mail in half.

In a cluster only the leader drains, and only within its lease (``authority``: the seconds
it may still act): an attempt starts only with ``MIN_AUTHORITY`` left and is cut off before
the lease ends, so the next leader, which takes over only after the lease, never sends
alongside it; and only letters already durable are sent (``undurable=False``), so a new
leader knows every mail the old one could have sent. There, too, an attempt starts only once
the last delivery is on record (``_blocked``): a leader cut from its database sends at most
the one mail whose record it could not write, which the next leader sends again (same
Message-ID), never a lease's worth of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import Counter
from typing import TYPE_CHECKING

import structlog

from outagewatch.notify.channel import Deferred, Delivered, Refused
from outagewatch.store import Changes

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from outagewatch.clock import Clock
    from outagewatch.engine.writer import Writer
    from outagewatch.metrics import Metrics
    from outagewatch.notify.channel import Channel, Delivery
    from outagewatch.notify.queue import Letter, Queue

log = structlog.get_logger("outagewatch.notify")

IDLE_NAP = 5.0  # look at the outbox at least this often
CLOSE_TIMEOUT = 10.0
MIN_AUTHORITY = 2.0  # seconds of lease an attempt needs to start; it ends 1 s before the lease


def unlimited() -> float:
    """One node: it may always send."""
    return math.inf


class Drainer:
    def __init__(
        self,
        *,
        queue: Queue,
        writer: Writer,
        channels: Mapping[str, Channel],
        clock: Clock,
        metrics: Metrics,
        backoff: tuple[float, float] = (5.0, 300.0),
        rng: random.Random | None = None,
        authority: Callable[[], float] = unlimited,
        undurable: bool = True,
    ) -> None:
        self._queue = queue
        self._writer = writer
        self._channels = dict(channels)
        self._clock = clock
        self._metrics = metrics
        self._backoff = backoff
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._authority = authority
        self._may_send_undurable = undurable
        self._wake = asyncio.Event()
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._failed_kinds = {"open", "update", "resolved"}  # exported as 0 from the start

    def reconfigure(self, channels: Mapping[str, Channel], backoff: tuple[float, float]) -> None:
        self._channels = dict(channels)
        self._backoff = backoff

    def poke(self) -> None:
        """New letters: look now rather than at the next nap's end."""
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Start no new attempt, and wait (at most ``grace``) for the one in progress."""
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            if self._stopping:
                await asyncio.Event().wait()  # parked until cancelled
            await self.send_due()
            upcoming = (None if self._blocked()  # poked when the record is written
                        else self._queue.next_attempt(undurable=self._undurable()))
            now = self._clock.now().timestamp()
            nap = IDLE_NAP if upcoming is None else min(IDLE_NAP, max(0.0, upcoming - now))
            waiter = asyncio.ensure_future(self._wake.wait())
            sleeper = asyncio.ensure_future(self._clock.sleep_until(
                self._clock.monotonic() + nap))
            try:
                await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                sleeper.cancel()

    def _undurable(self) -> bool:
        """Send letters not yet in the store? Only while the store cannot take them, and
        never in a cluster."""
        return self._may_send_undurable and self._writer.failing is not None

    def _blocked(self) -> bool:
        """In a cluster: a delivery not yet on record holds back the next attempt."""
        return not self._may_send_undurable and self._queue.sent_unrecorded()

    async def send_due(self) -> int:
        """Try every letter that is due now; return how many were delivered."""
        sent = 0
        while not self._stopping:
            self._supersede()
            due = self._queue.due(self._clock.now().timestamp(), undurable=self._undurable())
            if not due:
                break
            progress = False
            for letter in due:
                if self._stopping or self._authority() < MIN_AUTHORITY or self._blocked():
                    break
                if await self._attempt(letter):
                    sent += 1
                    progress = True
            if not progress:
                break
        self.update_gauges()
        return sent

    def update_gauges(self) -> None:
        pending, oldest, unrecorded = self._queue.stats(self._clock.now().timestamp())
        self._metrics.outbox_pending.set(pending)
        self._metrics.outbox_oldest_age.set(oldest)
        self._metrics.outbox_unrecorded.set(unrecorded)
        failed = Counter(letter.kind for letter in self._queue.failed())
        for kind in self._failed_kinds | set(failed):
            self._metrics.mails_failed.labels(kind).set(failed.get(kind, 0))
        self._failed_kinds |= set(failed)

    def clear_gauges(self) -> None:
        """A leader's term ended: its outbox is the next leader's, so this node reports none
        (or a follower would keep raising OutagewatchMailsUnrecorded for mails it no longer
        holds)."""
        self._metrics.outbox_pending.set(0)
        self._metrics.outbox_oldest_age.set(0)
        self._metrics.outbox_unrecorded.set(0)
        for kind in self._failed_kinds:
            self._metrics.mails_failed.labels(kind).set(0)

    def resend(self, thread: str, number: int, *, lane: str | None = None) -> list[Letter]:
        """Send the failed deliveries of a message again (the operator fixed the cause):
        back to pending, attempts reset, same payload and Message-ID; recorded through the
        writer like every change, and tried at once."""
        letters = self._queue.resend(thread, number, lane=lane,
                                     now=self._clock.now().timestamp())
        for letter in letters:
            self._record(letter)
            log.info("mail_resend", thread=letter.key.thread, kind=letter.kind,
                     number=letter.key.number, lane=letter.key.lane)
        if letters:
            self.update_gauges()
            self.poke()
        return letters

    def _supersede(self) -> None:
        stale = self._queue.supersede()
        for letter in stale:
            self._record(letter)
            self._metrics.notifications.labels(letter.kind, "superseded").inc()
            log.info("mail_superseded", thread=letter.key.thread, kind=letter.kind,
                     number=letter.key.number, lane=letter.key.lane,
                     note="never delivered, and the RESOLVED mail follows: not sent")
        # what follows them answers the last message before them, which was sent
        for follower, parent in self._queue.followers(stale):
            channel = self._channels.get(follower.key.channel)
            if channel is None:
                continue
            try:
                follower.payload = channel.rethread(follower.payload, parent=parent)
            except (KeyError, ValueError, TypeError):  # a payload of an older form: as it is
                continue
            self._record(follower)

    async def _attempt(self, letter: Letter) -> bool:
        self._idle.clear()
        try:
            outcome = await self._deliver(letter)
            now = self._clock.now().timestamp()
            if isinstance(outcome, Delivered):
                letter.status, letter.sent_at = "sent", now
                letter.attempts += 1
                letter.last_error = None
                self._record(letter)
                self._metrics.notifications.labels(letter.kind, "sent").inc()
                log.info("mail_sent", thread=letter.key.thread, kind=letter.kind,
                         number=letter.key.number, channel=letter.key.channel,
                         lane=letter.key.lane)
                if outcome.close is not None:
                    with contextlib.suppress(Exception, TimeoutError):
                        await asyncio.wait_for(outcome.close(), CLOSE_TIMEOUT)
                return True
            if isinstance(outcome, Deferred):
                base, ceiling = self._backoff
                delay = min(ceiling, base * 2 ** letter.attempts) * self._rng.uniform(0.5, 1.0)
                letter.attempts += 1
                letter.next_attempt, letter.last_error = now + delay, outcome.error
                letter.payload = outcome.payload or letter.payload
                self._record(letter)
                self._metrics.notifications.labels(letter.kind, "retry").inc()
                log.warning("mail_deferred", thread=letter.key.thread, kind=letter.kind,
                            lane=letter.key.lane, error=outcome.error,
                            retry_in_s=round(delay, 1), attempt=letter.attempts)
                return False
            self._fail(letter, outcome.error)
            return False
        finally:
            self._idle.set()

    async def _deliver(self, letter: Letter) -> Delivery:
        channel = self._channels.get(letter.key.channel)
        if channel is None:
            return Refused(f"no channel {letter.key.channel!r} is configured")
        left = self._authority() - 1.0
        try:
            async with asyncio.timeout(left if left < math.inf else None):
                return await channel.deliver(letter)
        except TimeoutError as exc:
            if left < math.inf and self._authority() <= 1.0:
                return Deferred("cut off: this node's leadership lease was running out")
            return self._crashed(letter, exc)
        except Exception as exc:  # a bug in a channel: the mail stays, the drainer goes on
            return self._crashed(letter, exc)

    def _crashed(self, letter: Letter, exc: Exception) -> Delivery:
        log.error("channel_crashed", channel=letter.key.channel, thread=letter.key.thread,
                  exc_info=exc)
        return Deferred(f"the {letter.key.channel} channel crashed: "
                        f"{type(exc).__name__}: {exc}")

    def _fail(self, letter: Letter, error: str) -> None:
        letter.status, letter.last_error = "failed", error
        letter.attempts += 1
        self._record(letter)
        self._metrics.notifications.labels(letter.kind, "failed").inc()
        log.error("mail_failed", thread=letter.key.thread, kind=letter.kind,
                  lane=letter.key.lane, error=error,
                  note="kept as failed: fix the cause, then resend it")

    def _record(self, letter: Letter) -> None:
        delivery = self._queue.changed(letter)
        self._writer.submit(Changes(deliveries={letter.key: delivery}))
