"""Runs every target every ``interval``, start to start, on an injected clock.

One loop and a heap of due times rather than a task per target: 10,000 targets cost one
sleeping task. Each target's first run is spread over its interval by a stable offset derived
from its name, so restarts keep the rhythm and targets do not all fire at once. A target is
never run twice at once (the skipped run is counted), a semaphore caps probes in flight, and
a timer marks a run that is still going when its threshold passes.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import structlog

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from outagewatch.clock import Clock
    from outagewatch.config import Target
    from outagewatch.metrics import Metrics
    from outagewatch.model import Rule, Sample

log = structlog.get_logger("outagewatch.scheduler")

MAX_NAP = 1.0  # the loop goes round at least this often, so its heartbeat stays fresh


class Recorder(Protocol):
    """Where run starts, finished samples and overdue runs go (metrics now; the evaluator
    next)."""

    def started(self, target: Target, rule: Rule, started_at: datetime) -> None: ...

    def record(self, target: Target, rule: Rule, sample: Sample) -> None: ...

    def overdue(self, target: Target, rule: Rule, started_at: datetime) -> None: ...

    def abandoned(self, target: Target, rule: Rule, started_at: datetime) -> None: ...


Prober = Callable[["Target", "Rule"], "Awaitable[Sample]"]


def stable_offset(name: str, interval: float) -> float:
    """Where in its interval a target runs: the same for the same name, spread evenly."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * interval


@dataclass(eq=False)
class _Entry:
    target: Target
    rule: Rule
    due: float
    generation: int
    task: asyncio.Task[None] | None = None
    skipped: int = 0


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    name: str = field(compare=False)
    generation: int = field(compare=False)


class Scheduler:
    def __init__(
        self,
        *,
        clock: Clock,
        probe: Prober,
        recorder: Recorder,
        metrics: Metrics,
        max_in_flight: int,
    ) -> None:
        self._clock = clock
        self._probe = probe
        self._recorder = recorder
        self._metrics = metrics
        self._limit = asyncio.Semaphore(max_in_flight)
        self._entries: dict[str, _Entry] = {}
        self._heap: list[_Due] = []
        self._seq = 0
        self._generation = 0
        self._epoch = clock.monotonic()
        self._sleeper: asyncio.Future[None] | None = None
        self._running = False
        self.heartbeat = self._epoch

    @property
    def epoch(self) -> float:
        """The monotonic time that first runs are offset from."""
        return self._epoch

    @property
    def running(self) -> bool:
        return self._running

    def targets(self) -> dict[str, Target]:
        return {name: entry.target for name, entry in self._entries.items()}

    def skipped(self, name: str) -> int:
        return self._entries[name].skipped

    def apply(self, targets: Sequence[tuple[Target, Rule]]) -> None:
        """Make the schedule match ``targets``: add new, update changed, drop removed."""
        wanted = {target.name: (target, rule) for target, rule in targets}
        now = self._clock.monotonic()
        for name in list(self._entries):
            if name not in wanted:
                entry = self._entries.pop(name)
                if entry.task is not None:
                    entry.task.cancel()
                log.info("target_removed", target=name)
        for name, (target, rule) in wanted.items():
            found = self._entries.get(name)
            if found is None:
                self._generation += 1
                entry = _Entry(target, rule, self._first_due(name, rule.interval, now),
                               self._generation)
                self._entries[name] = entry
                self._push(entry)
            elif found.target != target or found.rule != rule:
                entry = found
                interval_changed = entry.rule.interval != rule.interval
                entry.target, entry.rule = target, rule
                if interval_changed:
                    self._generation += 1
                    entry.generation = self._generation
                    entry.due = self._first_due(name, rule.interval, now)
                    self._push(entry)
                log.info("target_changed", target=name)
        if self._sleeper is not None:
            self._sleeper.cancel()  # re-plan the next wake-up

    def _first_due(self, name: str, interval: float, now: float) -> float:
        start = self._epoch + stable_offset(name, interval)
        periods = max(0, math.ceil((now - start) / interval))
        return start + periods * interval

    def _push(self, entry: _Entry) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Due(entry.due, self._seq, entry.target.name,
                                        entry.generation))

    async def run(self) -> None:
        """Run until cancelled; on the way out cancel and await the runs in flight."""
        self._running = True
        try:
            while True:
                now = self._clock.monotonic()
                self.heartbeat = now
                self._metrics.heartbeat.set(self._clock.now().timestamp())
                self._dispatch_due(now)
                wake = min(self._heap[0].at if self._heap else math.inf, now + MAX_NAP)
                self._sleeper = asyncio.ensure_future(self._clock.sleep_until(wake))
                await asyncio.wait({self._sleeper})
        finally:
            self._running = False
            if self._sleeper is not None:
                self._sleeper.cancel()
            await self._cancel_runs()

    async def _cancel_runs(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def _dispatch_due(self, now: float) -> None:
        while self._heap and self._heap[0].at <= now:
            due = heapq.heappop(self._heap)
            entry = self._entries.get(due.name)
            if entry is None or entry.generation != due.generation:
                continue  # removed or rescheduled since this was planned
            if entry.task is None:
                entry.task = asyncio.create_task(self._run_one(entry, due.at))
            else:
                self._skip(entry, 1)
            entry.due = due.at + entry.rule.interval
            if entry.due <= now:  # the loop itself was stalled for a whole interval or more
                missed = math.floor((now - entry.due) / entry.rule.interval) + 1
                entry.due += missed * entry.rule.interval
                self._skip(entry, missed)
            self._push(entry)

    def _skip(self, entry: _Entry, count: int) -> None:
        entry.skipped += count
        self._metrics.skipped.labels(
            entry.target.name, entry.target.type, entry.target.platform
        ).inc(count)
        log.warning("probe_run_skipped", target=entry.target.name, count=count,
                    reason="previous run still in flight")

    def _report(self, handler: Callable[[Target, Rule, datetime], None], target: Target,
                rule: Rule, started_at: datetime) -> None:
        try:
            handler(target, rule, started_at)
        except Exception:  # a bug downstream must not kill the probe or the timers
            log.exception("recorder_crashed", target=target.name, handler=handler.__name__)

    async def _run_one(self, entry: _Entry, planned: float) -> None:
        target, rule = entry.target, entry.rule
        try:
            async with self._limit:
                start = self._clock.monotonic()
                self._metrics.schedule_lag.observe(max(0.0, start - planned))
                started_at = self._clock.now()
                self._report(self._recorder.started, target, rule, started_at)
                self._metrics.in_flight.inc()
                timer = self._clock.call_at(start + rule.threshold, lambda: self._report(
                    self._recorder.overdue, target, rule, started_at))
                try:
                    sample = await self._probe(target, rule)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug, not a probe failure: keep the schedule alive
                    log.exception("probe_crashed", target=target.name)
                    self._report(self._recorder.abandoned, target, rule, started_at)
                    return
                finally:
                    timer.cancel()
                    self._metrics.in_flight.dec()
            if self._entries.get(target.name) is entry:
                # the run is known by the start reported above, whatever the probe stamped
                self._recorder.record(target, rule, replace(sample, started_at=started_at))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("record_crashed", target=target.name)
        finally:
            entry.task = None
