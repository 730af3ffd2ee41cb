"""Samples to verdicts to incidents to the outbox: the engine around the pure core.

The scheduler reports each run: started, finished, past its threshold, or abandoned. The
engine runs the evaluator, turns declarations and recoveries into incident changes, has
their messages composed, and hands all of it (verdict, sample, book, incident, envelopes)
to the writer as one change. Timers fire at each target's deadline and at each platform's
next UPDATE. Memory is the truth; the store is its durable copy, loaded at start, so the
update cadence and open incidents survive a restart.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import structlog

from outagewatch.core import evaluator, incidents
from outagewatch.core.evaluator import Declared, Health, Observation, Verdict
from outagewatch.core.incidents import Book, Platform
from outagewatch.core.render import Observed
from outagewatch.engine.timers import TimerKind
from outagewatch.errors import UnknownIncident
from outagewatch.store import Changes, StoredSample

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from outagewatch.clock import Clock
    from outagewatch.config import Target
    from outagewatch.engine.compose import Composer
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

_EVENTS = {"open": "incident_opened", "update": "incident_updated",
           "resolved": "incident_resolved"}


class Engine:
    def __init__(self, *, topology: Topology, state: State, writer: Writer,
                 composer: Composer, timers: Timers, clock: Clock, metrics: Metrics) -> None:
        self.topology = topology
        self._writer = writer
        self._composer = composer
        self._timers = timers
        self._clock = clock
        self._metrics = metrics
        # runs in flight when the previous process stopped will never report
        self._verdicts = {name: evaluator.resume(v, topology.targets[name].outage)
                          if name in topology.targets else v
                          for name, v in state.verdicts.items()}
        self._books = dict(state.books)
        self._recent = {name: deque(samples, maxlen=OBSERVATIONS_IN_MAIL)
                        for name, samples in state.recent.items()}

    def configure(self, topology: Topology) -> None:
        """A (re)loaded configuration: platforms, targets and their rules."""
        self.topology = topology
        self._composer.topology = topology

    def start(self) -> None:
        """After a (re)start: act on deadlines that passed while we were down, arm timers."""
        for name in list(self._verdicts):
            if name in self.topology.targets:
                self._tick_target(name)
        for platform in list(self._books):
            if platform in self.topology.platforms:
                self._tick_platform(platform)
        self._refresh_gauges()

    def close(self) -> None:
        self._timers.close()

    # -- reads --------------------------------------------------------------------------------

    def verdict(self, name: str) -> Verdict:
        return self._verdicts.get(name, Verdict())

    def book(self, platform: str) -> Book:
        return self._books.get(platform, Book())

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
                              sample.phase.value if sample.phase else None, obs.bad)
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

    def change_incident(self, incident_id: str, *, etr: float | None = None,
                        interval: float | None = None,
                        note: str | None = None) -> incidents.Incident:
        """An operator's change to an open incident: one UPDATE mail naming all of it."""
        for platform, book in self._books.items():
            if book.open is not None and book.open.id.lower() == incident_id.lower():
                now = self._clock.now().timestamp()
                changes = Changes()
                self._book_changed(platform, incidents.change(book, now, etr=etr,
                                                              interval=interval, note=note),
                                   now, changes)
                self._writer.submit(changes)
                incident = self._books[platform].open
                assert incident is not None
                return incident
        raise UnknownIncident(f"no open incident {incident_id!r}")

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
        changes = Changes(forgotten={name})
        now = self._clock.now().timestamp()
        for platform, book in list(self._books.items()):
            if book.open is not None and name in book.open.affected:
                known = self.topology.platforms.get(platform, Platform(platform, ()))
                self._book_changed(platform, incidents.restored(book, known, name, now, now),
                                   now, changes)
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
        self._change(name, step, now, changes)

    def _tick_target(self, name: str) -> None:
        info = self.topology.targets.get(name)
        if info is not None:
            now = self._clock.now().timestamp()
            self._change(name, evaluator.tick(self.verdict(name), now, info.outage), now)

    def _tick_platform(self, platform: str) -> None:
        now = self._clock.now().timestamp()
        changes = Changes()
        self._book_changed(platform, incidents.tick(self.book(platform), self._platform(platform),
                                                    now), now, changes)
        self._writer.submit(changes)

    def _change(self, name: str, step: evaluator.Step, now: float,
                changes: Changes | None = None) -> None:
        """A target's new verdict and the incident changes it causes, as one change."""
        changes = changes if changes is not None else Changes()
        verdict, events = step
        changes.verdicts[name] = verdict
        info = self.topology.targets[name]
        for event in events:
            book, platform = self.book(info.platform), self.topology.platforms[info.platform]
            if isinstance(event, Declared):
                log.warning("outage_declared", target=name, platform=info.platform,
                            outage_start=event.outage_start)
                result = incidents.declared(book, platform, name, event.outage_start, now)
            else:
                log.info("outage_ended", target=name, platform=info.platform,
                         restored_at=event.restored_at)
                result = incidents.restored(book, platform, name, event.restored_at, now)
            self._book_changed(info.platform, result, now, changes)
        self._verdicts[name] = verdict
        self._metrics.target_outage.labels(name, info.type.value, info.platform).set(
            1 if verdict.health is Health.OUTAGE else 0)
        self._arm_target(name, verdict, now)
        self._writer.submit(changes)

    def _book_changed(self, platform: str, step: incidents.Step, now: float,
                      changes: Changes) -> None:
        book, notices = step
        changes.books[platform] = book
        for notice in notices:
            incident = notice.incident
            changes.incidents[incident.id] = incident
            log.info(_EVENTS[notice.kind.value], incident_id=incident.id, platform=platform,
                     severity=incident.severity, affected=sorted(incident.affected),
                     reasons=list(notice.reasons))
            observed = [Observed(s.target, s.start, s.duration, s.result, s.phase)
                        for name in sorted(incident.outage_starts)
                        for s in self._recent.get(name, ())]
            changes.envelopes += self._composer.incident(notice, observed, now)
        self._books[platform] = book
        deadline = incidents.next_deadline(book, self._platform(platform))
        self._timers.arm(TimerKind.PLATFORM, platform, deadline, now=now,
                         callback=lambda: self._tick_platform(platform))
        if notices:
            self._refresh_gauges()

    def _platform(self, name: str) -> Platform:
        """A platform as configured (one dropped by a reload keeps its incident's cadence)."""
        return self.topology.platforms.get(name, Platform(name, ()))

    def _arm_target(self, name: str, verdict: Verdict, now: float) -> None:
        deadline = evaluator.next_deadline(verdict, self.topology.targets[name].outage)
        self._timers.arm(TimerKind.TARGET, name, deadline, now=now,
                         callback=lambda: self._tick_target(name))

    def _refresh_gauges(self) -> None:
        self._metrics.incidents_open.clear()
        for platform, book in self._books.items():
            if book.open is not None:
                self._metrics.incidents_open.labels(platform, str(book.open.severity)).set(1)


_: type[Recorder] = Engine
