"""Drains the outbox through the channels: in order per thread, with backoff and jitter.

Only the oldest pending envelope of a thread and channel is tried, so a thread arrives in
order. A deferred attempt is retried after ``base * 2 ** attempts`` (capped, with jitter); a
refused one is marked failed and logged as a configuration error, never retried blindly.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

import structlog

from outagewatch.notify.channel import Deferred, Delivered

if TYPE_CHECKING:
    from collections.abc import Mapping

    from outagewatch.clock import Clock
    from outagewatch.metrics import Metrics
    from outagewatch.notify.channel import Channel
    from outagewatch.store import Outbox, OutboxItem

log = structlog.get_logger("outagewatch.notify")

IDLE_NAP = 5.0  # look at the outbox at least this often


class Drainer:
    def __init__(
        self,
        *,
        outbox: Outbox,
        channels: Mapping[str, Channel],
        clock: Clock,
        metrics: Metrics,
        backoff: tuple[float, float] = (5.0, 300.0),
        rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self._channels = dict(channels)
        self._clock = clock
        self._metrics = metrics
        self._backoff = backoff
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._wake = asyncio.Event()

    def reconfigure(self, channels: Mapping[str, Channel], backoff: tuple[float, float]) -> None:
        self._channels = dict(channels)
        self._backoff = backoff

    def poke(self) -> None:
        """New envelopes in the outbox: look now rather than at the next nap's end."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.send_due()
            now = self._clock.now().timestamp()
            upcoming = await self._outbox.next_attempt()
            nap = IDLE_NAP if upcoming is None else min(IDLE_NAP, max(0.0, upcoming - now))
            waiter = asyncio.ensure_future(self._wake.wait())
            sleeper = asyncio.ensure_future(self._clock.sleep_until(
                self._clock.monotonic() + nap))
            try:
                await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                sleeper.cancel()

    async def send_due(self) -> int:
        """Try every envelope that is due now; return how many were delivered."""
        sent = 0
        while due := await self._outbox.due(self._clock.now().timestamp()):
            progress = False
            for item in due:
                if await self._attempt(item):
                    sent += 1
                    progress = True
            if not progress:
                break
        pending, oldest = await self._outbox.stats(self._clock.now().timestamp())
        self._metrics.outbox_pending.set(pending)
        self._metrics.outbox_oldest_age.set(oldest)
        return sent

    async def _attempt(self, item: OutboxItem) -> bool:
        channel = self._channels.get(item.channel)
        if channel is None:
            await self._fail(item, f"no channel {item.channel!r} is configured")
            return False
        outcome = await channel.deliver(item)
        now = self._clock.now().timestamp()
        if isinstance(outcome, Delivered):
            await self._outbox.mark_sent(item.id, now)
            self._metrics.notifications.labels(item.kind, "sent").inc()
            log.info("mail_sent", thread=item.thread, kind=item.kind, number=item.number,
                     channel=item.channel, refused=list(outcome.refused))
            return True
        if isinstance(outcome, Deferred):
            base, ceiling = self._backoff
            delay = min(ceiling, base * 2 ** item.attempts) * self._rng.uniform(0.5, 1.0)
            await self._outbox.mark_retry(item.id, payload=outcome.payload or item.payload,
                                          at=now + delay, error=outcome.error)
            self._metrics.notifications.labels(item.kind, "retry").inc()
            log.warning("mail_deferred", thread=item.thread, kind=item.kind,
                        error=outcome.error, retry_in=round(delay, 1),
                        attempt=item.attempts + 1)
            return False
        await self._fail(item, outcome.error)
        return False

    async def _fail(self, item: OutboxItem, error: str) -> None:
        await self._outbox.mark_failed(item.id, error)
        self._metrics.notifications.labels(item.kind, "failed").inc()
        log.error("mail_failed", thread=item.thread, kind=item.kind, error=error,
                  note="a configuration error: fix the relay settings; not retried")
