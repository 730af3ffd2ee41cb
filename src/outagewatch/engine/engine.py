"""Samples to verdicts, and verdicts to the incident desk: the engine around the evaluator.

The scheduler reports each run: started, finished, past its threshold, or abandoned. The
engine runs the evaluator for each target and hands what it declares or restores to the
incident desk (``desk.py``), which turns it into incident changes and mails; the verdict,
sample, book, incident and envelopes are written as one change. Timers fire at each target's
deadline. Memory is the truth; the store is its durable copy, loaded at start.

Each sample also updates the ledger that outlasts the samples, in the same change: its
5-minute bucket's rollup and the target's coverage interval (``core/rollup.py``), per
location. The desk adds the outages.

In a cluster a node has no desk of its own: the engine publishes what its location sees of
each target (a ``Seen``, in ``Changes.views``) and the leader's consensus decides
(``cluster/consensus.py``).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import structlog

from outagewatch.core import evaluator
from outagewatch.core.evaluator import Declared, Health, Observation, Restored, Verdict
from outagewatch.core.incidents import Book
from outagewatch.core.quorum import Seen
from outagewatch.core.rollup import Accumulator, extend
from outagewatch.engine.timers import TimerKind
from outagewatch.store import Changes, StoredSample

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from outagewatch.clock import Clock
    from outagewatch.config import Target
    from outagewatch.engine.desk import Desk
    from outagewatch.engine.timers import Timers
    from outagewatch.engine.writer import Writer
    from outagewatch.metrics import Metrics
    from outagewatch.model import Rule, Sample
    from outagewatch.scheduler import Recorder
    from outagewatch.store import State
    from outagewatch.topology import Topology

log = structlog.get_logger("outagewatch.engine")

KEEP_SAMPLES = 3600.0  # seconds of samples kept beyond the window, for mails and the API
OBSERVATIONS_IN_MAIL = 3  # recent results per affected service quoted in a mail


class Engine:
    def __init__(self, *, topology: Topology, state: State, writer: Writer,
                 desk: Desk | None, timers: Timers, clock: Clock, metrics: Metrics,
                 location: str = "") -> None:
        self.topology = topology
        self.desk = desk  # None: a cluster node, which publishes views instead
        self.location = location
        self._writer = writer
        self._timers = timers
        self._clock = clock
        self._metrics = metrics
        # runs in flight when the previous process stopped will never report
        self._verdicts = {name: evaluator.resume(v, topology.targets[name].outage)
                          if name in topology.targets else v
                          for name, v in state.verdicts.items()}
        self._views = dict(state.views)
        self._recent = {name: deque(samples, maxlen=OBSERVATIONS_IN_MAIL)
                        for name, samples in state.recent.items()}
        self._rollups = Accumulator()  # each target's open bucket, continued after a restart
        for rollup, durations in state.rollups.values():
            self._rollups.resume(rollup, durations)
        self._coverage = dict(state.coverage)  # each target's latest coverage interval

    def configure(self, topology: Topology) -> None:
        """A (re)loaded configuration: platforms, targets and their rules."""
        self.topology = topology
        if self.desk is not None:
            self.desk.configure(topology)

    def start(self) -> None:
        """After a (re)start: act on deadlines that passed while we were down, arm timers."""
        for name in list(self._verdicts):
            if name in self.topology.targets:
                self._tick_target(name)
        if self.desk is not None:
            self.desk.start()

    def close(self) -> None:
        self._timers.close()

    # -- reads --------------------------------------------------------------------------------

    def verdict(self, name: str) -> Verdict:
        return self._verdicts.get(name, Verdict())

    def book(self, platform: str) -> Book:
        return self.desk.book(platform) if self.desk is not None else Book()

    def recent(self, name: str) -> tuple[StoredSample, ...]:
        return tuple(self._recent.get(name, ()))

    def view(self, name: str) -> Seen | None:
        """What this location last published of the target (a cluster node)."""
        return self._views.get(name)

    def is_bad(self, name: str) -> bool:
        """Not answering normally right now: the last run BAD, or a BAD streak or outage."""
        recent = self._recent.get(name)
        return bool(recent and recent[-1].bad) or self.verdict(name).health is not Health.OK

    # -- the scheduler's Recorder protocol ----------------------------------------------------

    def started(self, target: Target, rule: Rule, started_at: datetime) -> None:
        """A run began: until its outcome is known, no deadline it could change may pass."""
        del rule
        name = target.name
        if name not in self.topology.targets:
            return
        now = self._clock.now().timestamp()
        step = evaluator.begin(self.verdict(name), started_at.timestamp(), now=now,
                               rule=self.topology.targets[name].outage)
        if step[1]:
            self._change(name, step, now)
        else:  # nothing to store: a run in flight is forgotten at a restart anyway
            self._verdicts[name] = step[0]
            self._arm_target(name, step[0], now)

    def record(self, target: Target, rule: Rule, sample: Sample) -> None:
        obs = Observation(sample.started_at.timestamp(), sample.is_bad(rule.threshold))
        stored = StoredSample(target.name, obs.start, sample.duration, sample.result.value,
                              sample.phase.value if sample.phase else None, obs.bad,
                              self.location)
        self._observe(target.name, obs, stored)

    def overdue(self, target: Target, rule: Rule, started_at: datetime) -> None:
        del rule
        self._observe(target.name, Observation(started_at.timestamp(), bad=True))

    def abandoned(self, target: Target, rule: Rule, started_at: datetime) -> None:
        del rule
        name = target.name
        if name not in self.topology.targets:
            return
        now = self._clock.now().timestamp()
        self._change(name, evaluator.abandon(self.verdict(name), started_at.timestamp(),
                                             now=now, rule=self.topology.targets[name].outage),
                     now)

    # -- changes from elsewhere ---------------------------------------------------------------

    def hold(self, floors: Mapping[str, float | None], now: float) -> None:
        """Maintenance: from when each target's BAD streak may count (see evaluator.hold)."""
        for name, floor in floors.items():
            if name not in self.topology.targets or self.verdict(name).floor == floor:
                continue
            held = evaluator.hold(self.verdict(name), floor)
            self._change(name, evaluator.tick(held, now, self.topology.targets[name].outage),
                         now)

    def forget(self, name: str) -> None:
        """A target left the configuration: it can no longer hold an incident open."""
        self._timers.cancel(TimerKind.TARGET, name)
        self._verdicts.pop(name, None)
        self._recent.pop(name, None)
        self._views.pop(name, None)
        self._rollups.forget(name)
        self._coverage.pop(name, None)
        changes = Changes(forgotten={name})
        if self.desk is not None:
            self.desk.forget(name, self._clock.now().timestamp(), changes)
        self._writer.submit(changes)

    # -- the machinery ------------------------------------------------------------------------

    def _observe(self, name: str, obs: Observation, stored: StoredSample | None = None) -> None:
        info = self.topology.targets.get(name)
        if info is None:
            return
        now = self._clock.now().timestamp()
        step = evaluator.observe(self.verdict(name), obs, arrived=now, rule=info.outage)
        changes = Changes()
        if stored is not None:
            changes.samples.append(stored)
            changes.keep_after[name] = (stored.start - info.outage.window
                                        - info.outage.coverage_gap - KEEP_SAMPLES)
            self._recent.setdefault(name, deque(maxlen=OBSERVATIONS_IN_MAIL)).append(stored)
            self._ledger(stored, info.rule.interval, info.rule.timeout, changes)
        self._change(name, step, now, changes, reported=obs.start)

    def _ledger(self, stored: StoredSample, interval: float, timeout: float,
                changes: Changes) -> None:
        """A sample's part of the ledger: its bucket's rollup, its target's coverage."""
        name, location = stored.target, self.location
        rollup = self._rollups.add(name, location, start=stored.start,
                                   duration=stored.duration, result=stored.result,
                                   bad=stored.bad)
        if rollup is not None:
            changes.rollups[(name, location, rollup.bucket)] = rollup
        since, until = extend(self._coverage.get(name), stored.start, interval=interval,
                              timeout=timeout)
        if (since, until) != self._coverage.get(name):
            self._coverage[name] = (since, until)
            changes.coverage[(name, location, since)] = until

    def _tick_target(self, name: str) -> None:
        info = self.topology.targets.get(name)
        if info is not None:
            now = self._clock.now().timestamp()
            self._change(name, evaluator.tick(self.verdict(name), now, info.outage), now)

    def _change(self, name: str, step: evaluator.Step, now: float,
                changes: Changes | None = None, *, reported: float | None = None) -> None:
        """A target's new verdict and what it causes (incident changes, or the location's
        view in a cluster), as one change. ``reported``: the start of a run that reported."""
        changes = changes if changes is not None else Changes()
        verdict, events = step
        changes.verdicts[name] = verdict
        info = self.topology.targets[name]
        if self.desk is not None:
            for event in events:
                if isinstance(event, Declared):
                    self.desk.declared(name, event.outage_start, now, changes)
                else:
                    self.desk.restored(name, event.restored_at, now, changes)
        else:
            self._publish(name, verdict, events, reported, changes)
        self._verdicts[name] = verdict
        self._metrics.target_outage.labels(name, info.type.value, info.platform).set(
            1 if verdict.health is Health.OUTAGE else 0)
        self._arm_target(name, verdict, now)
        self._writer.submit(changes)

    def _publish(self, name: str, verdict: Verdict, events: list[evaluator.Event],
                 reported: float | None, changes: Changes) -> None:
        """A cluster node: this location's view of the target, when it changed."""
        before = self._views.get(name)
        last = before.last_run if before is not None else None
        if reported is not None and (last is None or reported > last):
            last = reported
        restored_at = before.restored_at if before is not None else None
        for event in events:
            if isinstance(event, Restored):
                restored_at = event.restored_at
            elif isinstance(event, Declared):
                log.warning("outage_seen", target=name, location=self.location,
                            outage_start=event.outage_start)
        seen = Seen(verdict.health, last, verdict.outage_start, restored_at)
        if seen != before:
            self._views[name] = seen
            changes.views[name] = seen

    def _arm_target(self, name: str, verdict: Verdict, now: float) -> None:
        deadline = evaluator.next_deadline(verdict, self.topology.targets[name].outage)
        self._timers.arm(TimerKind.TARGET, name, deadline, now=now,
                         callback=lambda: self._tick_target(name))


_: type[Recorder] = Engine
