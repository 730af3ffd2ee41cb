"""Runs every target every ``interval``, start to start, on an injected clock.

One loop and a heap of due times rather than a task per target: 10,000 targets cost one
sleeping task. Each target's first run is spread over its interval by a stable offset derived
from its name, so restarts keep the rhythm and targets do not all fire at once. A timer marks
a run that is still going when its threshold passes.

What the daemon's own limits may do to a run, and how each is made loud (DESIGN 4.3: the
monitor's blindness is never the service's health):

- A target never runs twice at once: a run due while the previous one is still going is
  skipped (``outagewatch_probe_runs_skipped_total{reason="previous_run_in_flight"}``).
- Nothing waits for a global cap. A run starts when due unless the probe capacity (sized from
  the open-file limit, ``capacity``) is full for its platform; a platform always has its fair
  share of it, so another platform's blackhole cannot take its runs. A run that finds no room
  waits in its platform's queue (served round-robin as runs end) and starts late; its start
  and timing begin when it really starts, and the lag is measured per platform. A run due
  while the last one is still waiting, or still going because it started late, is skipped
  (``reason="overload"``), as are the runs the loop missed when it fell an interval behind.
- A run that came out BAD only because the event loop stood still during it (``Stalls``) is
  reported ``abandoned``: nobody saw the service then. Its threshold timer counts only the
  time the loop ran, so such a run is not marked overdue by the stall either.
- Overload raises the ``scheduler_overload`` fault, discounted runs ``event_loop_stalled``;
  each clears after ``QUIET`` seconds without a sign of it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import math
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import structlog

from outagewatch import capacity
from outagewatch.model import Result

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from outagewatch.clock import Cancellable, Clock
    from outagewatch.config import Target
    from outagewatch.metrics import Metrics
    from outagewatch.model import Rule, Sample

log = structlog.get_logger("outagewatch.scheduler")

MAX_NAP = 1.0  # the loop goes round at least this often, so its heartbeat stays fresh
LATE = 1.0  # a run starting this far behind its plan: the daemon is not keeping up
QUIET = 60.0  # an overload fault clears after this long without a sign of it
# A stall of the loop counts against a run when it lasted at least this share of the run's
# threshold: shorter lateness is the loop's ordinary queueing, and counting it would discount
# a dead server's timeouts whenever the daemon is merely busy.
STALL_SHARE = 0.1
SUMMARY_EVERY = 10.0  # overload is logged at most this often, with counts per platform
OVERLOAD = "scheduler_overload"
STALLED = "event_loop_stalled"
CAUSES = {
    OVERLOAD: "the daemon cannot keep up: runs wait for probe capacity, start late or are "
              "skipped (see scheduler_overloaded in the logs)",
    STALLED: "the event loop stood still during runs: their BAD outcomes are not counted "
             "(see probe_run_discounted in the logs)",
}
_TIMED = frozenset({Result.OK, Result.TIMEOUT})  # outcomes a stall can turn BAD


class Recorder(Protocol):
    """Where run starts, finished samples and overdue runs go (metrics now; the evaluator
    next)."""

    def started(self, target: Target, rule: Rule, started_at: datetime) -> None: ...

    def record(self, target: Target, rule: Rule, sample: Sample) -> None: ...

    def overdue(self, target: Target, rule: Rule, started_at: datetime) -> None: ...

    def abandoned(self, target: Target, rule: Rule, started_at: datetime) -> None: ...


class Stalls(Protocol):
    """The event loop's own stalls (``looplag.LoopLag``)."""

    def stalled(self, since: float, until: float, *, longer_than: float = 0.0) -> float:
        """Seconds of ``[since, until]`` (monotonic) during which the loop stood still, in
        stalls of at least ``longer_than`` seconds each."""
        ...


class FaultSink(Protocol):
    """The daemon's fault registry (``faults.Faults``)."""

    def report(self, name: str, cause: str, *, blocking: bool = False) -> None: ...

    def clear(self, name: str) -> None: ...


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
    waiting: float | None = None  # the planned start of a run waiting for capacity
    waited: bool = False  # the run in flight waited for capacity before it started
    skipped: int = 0
    excused: bool = False  # its last run was discounted for a stall of the loop


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    name: str = field(compare=False)
    generation: int = field(compare=False)


class _Threshold:
    """A run's threshold timer: ``passed`` is called once the run has been in flight for its
    threshold, counting only the time the event loop ran (a stall re-arms it for the rest)."""

    def __init__(self, clock: Clock, threshold: float, start: float, *,
                 stalled: Callable[..., float], passed: Callable[[], None]) -> None:
        self._clock = clock
        self._threshold, self._start = threshold, start
        self._stalled, self._passed = stalled, passed
        self.passed = False
        self._handle: Cancellable = clock.call_at(start + threshold, self._fire)

    def _fire(self) -> None:
        now = self._clock.monotonic()
        stalled = self._stalled(self._start, now, threshold=self._threshold)
        left = self._threshold - (now - self._start - stalled)
        if left > 1e-6:  # the loop stood still meanwhile: the run has time left
            self._handle = self._clock.call_at(now + left, self._fire)
            return
        self.passed = True
        self._passed()

    def cancel(self) -> None:
        self._handle.cancel()


class Scheduler:
    def __init__(
        self,
        *,
        clock: Clock,
        probe: Prober,
        recorder: Recorder,
        metrics: Metrics,
        max_in_flight: int | None = None,
        faults: FaultSink | None = None,
        stalls: Stalls | None = None,
    ) -> None:
        self._clock = clock
        self._probe = probe
        self._recorder = recorder
        self._metrics = metrics
        self._faults = faults
        self._stalls = stalls
        self._share = capacity.FairShare(_capacity(max_in_flight))
        metrics.capacity.set(self._share.capacity)
        self._entries: dict[str, _Entry] = {}
        self._heap: list[_Due] = []
        self._queues: dict[str, deque[_Entry]] = {}  # per platform, runs waiting for room
        self._seq = 0
        self._generation = 0
        self._epoch = clock.monotonic()
        self._sleeper: asyncio.Future[None] | None = None
        self._running = False
        self._started = False
        self._signs: dict[str, float] = {}  # fault -> when last seen (monotonic)
        self._tally: Counter[tuple[str, str]] = Counter()  # (platform, what) since last logged
        self._logged = -math.inf
        self.heartbeat = self._epoch

    @property
    def epoch(self) -> float:
        """The monotonic time that first runs are offset from."""
        return self._epoch

    @property
    def running(self) -> bool:
        return self._running

    @property
    def capacity(self) -> int:
        """Probe runs that may be in flight at once, all platforms together."""
        return self._share.capacity

    @property
    def in_flight(self) -> int:
        return self._share.total

    def targets(self) -> dict[str, Target]:
        return {name: entry.target for name, entry in self._entries.items()}

    def skipped(self, name: str) -> int:
        return self._entries[name].skipped

    def stalled(self, since: float, until: float, *, threshold: float) -> float:
        """How long the event loop stood still within ``[since, until]``, in stalls that
        matter to a run with ``threshold`` (0 without a stall monitor)."""
        if self._stalls is None:
            return 0.0
        return self._stalls.stalled(since, until, longer_than=STALL_SHARE * threshold)

    def apply(self, targets: Sequence[tuple[Target, Rule]]) -> None:
        """Make the schedule match ``targets``: add new, update changed, drop removed."""
        wanted = {target.name: (target, rule) for target, rule in targets}
        now = self._clock.monotonic()
        for name in list(self._entries):
            if name not in wanted:
                self._remove(name)
        for name, (target, rule) in wanted.items():
            found = self._entries.get(name)
            if found is None:
                self._generation += 1
                entry = _Entry(target, rule, self._first_due(name, rule.interval, now),
                               self._generation)
                self._entries[name] = entry
                self._push(entry)
            elif found.target != target or found.rule != rule:
                self._change(found, target, rule, now)
        self._share.configure(Counter(e.target.platform for e in self._entries.values()))
        if self._running:
            self._serve_waiting()
        if self._sleeper is not None:
            self._sleeper.cancel()  # re-plan the next wake-up

    def _remove(self, name: str) -> None:
        entry = self._entries.pop(name)
        if entry.task is not None:
            entry.task.cancel()
        self._unqueue(entry)
        log.info("target_removed", target=name)

    def _change(self, entry: _Entry, target: Target, rule: Rule, now: float) -> None:
        interval_changed = entry.rule.interval != rule.interval
        if entry.target.platform != target.platform:
            self._unqueue(entry)
        entry.target, entry.rule = target, rule
        if interval_changed:
            self._generation += 1
            entry.generation = self._generation
            entry.due = self._first_due(target.name, rule.interval, now)
            self._push(entry)
        log.info("target_changed", target=target.name)

    def _plan_from(self, now: float) -> None:
        """Move first runs that fell due before the scheduler ran (while the daemon was
        still starting) to their next moment in the same rhythm: they were never late."""
        for entry in self._entries.values():
            if entry.due < now:
                self._generation += 1
                entry.generation = self._generation
                entry.due = self._first_due(entry.target.name, entry.rule.interval, now)
                self._push(entry)

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
        if not self._started:  # the first runs are planned from now, not from apply()
            self._started = True
            self._plan_from(self._clock.monotonic())
        try:
            while True:
                now = self._clock.monotonic()
                self.heartbeat = now
                self._metrics.heartbeat.set(self._clock.now().timestamp())
                self._dispatch_due(now)
                self._clear_quiet(now)
                wake = min(self._heap[0].at if self._heap else math.inf, now + MAX_NAP)
                self._sleeper = asyncio.ensure_future(self._clock.sleep_until(wake))
                await asyncio.wait({self._sleeper})
        finally:
            self._running = False
            if self._sleeper is not None:
                self._sleeper.cancel()
            for entry in [e for queue in self._queues.values() for e in queue]:
                self._unqueue(entry)
            await self._cancel_runs()

    async def _cancel_runs(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # -- starting runs ------------------------------------------------------------------------

    def _dispatch_due(self, now: float) -> None:
        while self._heap and self._heap[0].at <= now:
            due = heapq.heappop(self._heap)
            entry = self._entries.get(due.name)
            if entry is None or entry.generation != due.generation:
                continue  # removed or rescheduled since this was planned
            if entry.task is not None:  # still going, or still going because it started late
                self._skip(entry, 1, "overload" if entry.waited else "previous_run_in_flight")
            elif entry.waiting is not None:  # its last run never found room: this one replaces it
                self._skip(entry, 1, "overload")
                entry.waiting = due.at
            elif self._share.admit(entry.target.platform):
                self._start(entry, due.at)
            else:
                self._wait(entry, due.at)
            entry.due = due.at + entry.rule.interval
            if entry.due <= now:  # the loop itself was stalled for a whole interval or more
                missed = math.floor((now - entry.due) / entry.rule.interval) + 1
                entry.due += missed * entry.rule.interval
                self._skip(entry, missed, "overload")
            self._push(entry)

    def _start(self, entry: _Entry, planned: float, *, waited: bool = False) -> None:
        """Start a run that has been admitted (it holds one unit of the capacity)."""
        entry.waited = waited
        platform = entry.target.platform
        self._metrics.in_flight.labels(platform).inc()
        task = asyncio.create_task(self._run_one(entry, planned))
        entry.task = task
        task.add_done_callback(functools.partial(self._finished, entry, platform))

    def _finished(self, entry: _Entry, platform: str, task: asyncio.Task[None]) -> None:
        if entry.task is task:
            entry.task = None
        self._share.release(platform)
        self._metrics.in_flight.labels(platform).dec()
        if self._running:
            self._serve_waiting()

    def _wait(self, entry: _Entry, planned: float) -> None:
        platform = entry.target.platform
        entry.waiting = planned
        queue = self._queues.setdefault(platform, deque())
        queue.append(entry)
        self._metrics.waiting.labels(platform).set(len(queue))
        self._overloaded(platform, "waited")

    def _unqueue(self, entry: _Entry) -> None:
        if entry.waiting is None:
            return
        entry.waiting = None
        platform = entry.target.platform
        queue = self._queues.get(platform)
        if queue is not None and entry in queue:
            queue.remove(entry)
            self._metrics.waiting.labels(platform).set(len(queue))
            if not queue:
                del self._queues[platform]

    def _serve_waiting(self) -> None:
        """Start waiting runs while there is room, one platform after another."""
        progressed = True
        while progressed and self._queues:
            progressed = False
            for platform in list(self._queues):
                queue = self._queues[platform]
                if not self._share.admit(platform):
                    continue
                entry = queue.popleft()
                planned, entry.waiting = entry.waiting, None
                assert planned is not None
                del self._queues[platform]
                if queue:
                    self._queues[platform] = queue  # to the back of the round
                self._metrics.waiting.labels(platform).set(len(queue))
                self._start(entry, planned, waited=True)
                progressed = True

    def _skip(self, entry: _Entry, count: int, reason: str) -> None:
        target = entry.target
        entry.skipped += count
        self._metrics.skipped.labels(target.name, target.type, target.platform,
                                     reason).inc(count)
        if reason == "overload":
            self._overloaded(target.platform, "skipped", count)
        else:
            log.warning("probe_run_skipped", target=target.name, count=count, reason=reason)

    # -- one run ------------------------------------------------------------------------------

    def _report(self, handler: Callable[[Target, Rule, datetime], None], target: Target,
                rule: Rule, started_at: datetime) -> None:
        try:
            handler(target, rule, started_at)
        except Exception:  # a bug downstream must not kill the probe or the timers
            log.exception("recorder_crashed", target=target.name, handler=handler.__name__)

    async def _run_one(self, entry: _Entry, planned: float) -> None:
        target, rule = entry.target, entry.rule
        try:
            start = self._clock.monotonic()
            lag = max(0.0, start - planned)
            self._metrics.schedule_lag.labels(target.platform).observe(lag)
            if lag > LATE:
                self._overloaded(target.platform, "late")
            started_at = self._clock.now()
            self._report(self._recorder.started, target, rule, started_at)
            threshold = _Threshold(self._clock, rule.threshold, start, stalled=self.stalled,
                                   passed=lambda: self._report(self._recorder.overdue, target,
                                                               rule, started_at))
            try:
                sample = await self._probe(target, rule)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug, not a probe failure: keep the schedule alive
                log.exception("probe_crashed", target=target.name)
                self._report(self._recorder.abandoned, target, rule, started_at)
                return
            finally:
                threshold.cancel()
            if self._entries.get(target.name) is not entry:
                return
            stalled = 0.0 if threshold.passed else self._stall_behind(sample, rule, start)
            excused, entry.excused = entry.excused, bool(stalled)
            if stalled and excused:
                # a stall excuses one run, not the ones after it: a loop that stands still
                # run after run is a saturated daemon, and a dead server must be declared
                log.warning("probe_run_counted_despite_stall", target=target.name,
                            stalled_s=round(stalled, 4), note="the previous run was already "
                            "discounted: the daemon is saturated (see scheduler_overloaded)")
                stalled = 0.0
            if stalled:
                self._discount(target, rule, sample, started_at, stalled)
            else:
                # the run is known by the start reported above, whatever the probe stamped
                self._recorder.record(target, rule, replace(sample, started_at=started_at))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("record_crashed", target=target.name)

    def _stall_behind(self, sample: Sample, rule: Rule, start: float) -> float:
        """How long the loop stood still during a run that is BAD only because of that (it
        would have been within its threshold without the stall); 0 if its outcome stands."""
        if not sample.is_bad(rule.threshold) or sample.result not in _TIMED:
            return 0.0
        stalled = self.stalled(start, self._clock.monotonic(), threshold=rule.threshold)
        return stalled if stalled > 0 and sample.duration - stalled <= rule.threshold else 0.0

    def _discount(self, target: Target, rule: Rule, sample: Sample, started_at: datetime,
                  stalled: float) -> None:
        self._metrics.discounted.labels(target.name, target.type, target.platform).inc()
        log.warning("probe_run_discounted", target=target.name, platform=target.platform,
                    result=sample.result.value, duration_s=round(sample.duration, 4),
                    stalled_s=round(stalled, 4), threshold_s=rule.threshold,
                    note="BAD only because the daemon stood still; counted as unseen")
        self._overloaded(target.platform, "discounted", fault=STALLED)
        self._report(self._recorder.abandoned, target, rule, started_at)

    # -- overload, made loud ------------------------------------------------------------------

    def _overloaded(self, platform: str, what: str, count: int = 1, *,
                    fault: str = OVERLOAD) -> None:
        """A sign of overload (``what``: a run waited, was skipped, started late, or was
        discounted): the fault raised (once), and a summary logged every so often."""
        now = self._clock.monotonic()
        self._signs[fault] = now
        if self._faults is not None:
            self._faults.report(fault, CAUSES[fault])  # logged once, not per run
        self._tally[platform, what] += count
        if now - self._logged >= SUMMARY_EVERY:
            self._logged = now
            counts = dict(sorted((f"{p}.{w}", n) for (p, w), n in self._tally.items()))
            self._tally.clear()
            log.warning("scheduler_overloaded", runs=counts, capacity=self._share.capacity,
                        in_flight=self._share.total)

    def _clear_quiet(self, now: float) -> None:
        for fault, seen in list(self._signs.items()):
            if now - seen >= QUIET:
                del self._signs[fault]
                if self._faults is not None:
                    self._faults.clear(fault)
                log.info("scheduler_caught_up", fault=fault, quiet_s=QUIET)


def _capacity(max_in_flight: int | None) -> int:
    """The configured cap, or the open-file limit's, and never more than that allows."""
    files = capacity.open_files()
    allowed = capacity.budget(files)
    if max_in_flight is None:
        return allowed
    if max_in_flight > allowed:
        log.warning("max_in_flight_lowered", configured=max_in_flight, used=allowed,
                    open_files=files, note="each run in flight may hold two descriptors")
        return allowed
    return max_in_flight
