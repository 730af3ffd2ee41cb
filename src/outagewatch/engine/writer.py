"""Writes the engine's changes to the store behind it, in order, one transaction per batch.

The engine decides in memory and hands each change here (``submit``, never blocking); a
task writes what has accumulated as one unit of work, so a slow or networked store costs
latency, not throughput, and never blocks the event loop. When the store cannot write, the
changes stay queued, in order, and are retried with backoff; the engine keeps deciding, and
the fault is loud (``state_write``: logged, ``outagewatch_fault``, /readyz 503) until a
write succeeds again. ``flush`` waits until what was submitted before it is durable. With
``linger``, a write waits that long for more changes to join it (a cluster node's samples:
one transaction for many instead of one each).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from outagewatch.store import Changes, StoreError

if TYPE_CHECKING:
    from collections.abc import Callable

    from outagewatch.clock import Clock
    from outagewatch.faults import Faults
    from outagewatch.metrics import Metrics
    from outagewatch.store import StateStore

log = structlog.get_logger("outagewatch.writer")


class Writer:
    def __init__(self, store: StateStore, *, clock: Clock, faults: Faults, metrics: Metrics,
                 on_submitted: Callable[[Changes], None] = lambda _: None,
                 on_written: Callable[[Changes], None] = lambda _: None,
                 backoff: tuple[float, float] = (0.1, 5.0), linger: float = 0.0) -> None:
        self._store = store
        self._clock = clock
        self._faults = faults
        self._metrics = metrics
        self._on_submitted = on_submitted
        self._on_written = on_written
        self._backoff = backoff
        self._linger = linger  # seconds to gather changes before a write (group commit)
        self._pending = Changes()
        self._submitted = 0
        self._written = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self.failing: str | None = None  # why the last write failed, until one succeeds

    @property
    def pending(self) -> int:
        """Changes submitted and not yet written."""
        return self._submitted - self._written

    def submit(self, changes: Changes) -> None:
        if not changes:
            return
        self._pending.merge(changes)
        self._submitted += 1
        self._metrics.state_pending.set(self._submitted - self._written)
        self._wake.set()
        self._on_submitted(changes)

    async def flush(self) -> None:
        """Return once everything submitted so far is written."""
        wanted = self._submitted
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= wanted)

    async def run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            if self._linger:  # what arrives meanwhile shares the transaction
                await self._clock.sleep_until(self._clock.monotonic() + self._linger)
            self._wake.clear()
            batch, upto = self._pending, self._submitted
            self._pending = Changes()
            try:
                await self._store.apply(batch)
            except StoreError as exc:
                failures += 1
                batch.merge(self._pending)  # what came later wins over the failed batch
                self._pending = batch
                self._note_failure(str(exc))
                base, ceiling = self._backoff
                await self._clock.sleep_until(self._clock.monotonic()
                                              + min(ceiling, base * 2 ** (failures - 1)))
                self._wake.set()
                continue
            if failures:
                self._faults.clear("state_write")
            failures, self.failing = 0, None
            async with self._progress:
                self._written = upto
                self._progress.notify_all()
            self._metrics.state_pending.set(self._submitted - self._written)
            self._on_written(batch)

    def _note_failure(self, reason: str) -> None:
        self.failing = reason
        self._faults.report("state_write", reason, blocking=True)
