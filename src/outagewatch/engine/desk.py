"""The incident desk: outages of targets to incident books, mails and the UPDATE cadence.

The desk is told that a target's outage was declared or has ended (by the engine from one
location's verdict, or by the cluster's leader from the locations' consensus), and by an
operator that an incident changed. It keeps one book per platform, has each notice's
messages composed, arms each platform's next UPDATE, and adds all of it to the change the
caller writes. It decides nothing about targets: that is the evaluator's (and the quorum's).
It also keeps each target's outages in the ledger (``Changes.outages``): opened when
declared, closed when restored, or when the target leaves the configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from outagewatch.core import incidents
from outagewatch.core.incidents import Book, Platform
from outagewatch.core.render import Observed
from outagewatch.engine.timers import TimerKind
from outagewatch.errors import UnknownIncident
from outagewatch.store import Changes, OutageSpan

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from outagewatch.clock import Clock
    from outagewatch.engine.compose import Composer
    from outagewatch.engine.timers import Timers
    from outagewatch.engine.writer import Writer
    from outagewatch.metrics import Metrics
    from outagewatch.store import StoredSample
    from outagewatch.topology import Topology

log = structlog.get_logger("outagewatch.engine")

_EVENTS = {"open": "incident_opened", "update": "incident_updated",
           "resolved": "incident_resolved"}


class Desk:
    def __init__(self, *, topology: Topology, books: Mapping[str, Book], writer: Writer,
                 composer: Composer, timers: Timers, clock: Clock, metrics: Metrics,
                 recent: Callable[[str], Iterable[StoredSample]],
                 seen: Callable[[str], str] = lambda _: "") -> None:
        self.topology = topology
        self._books = dict(books)
        self._writer = writer
        self._composer = composer
        self._timers = timers
        self._clock = clock
        self._metrics = metrics
        self._recent = recent  # a target's latest samples, quoted in its mails
        self._seen = seen  # a cluster's account of who saw a target's outage

    def configure(self, topology: Topology) -> None:
        self.topology = topology

    def start(self) -> None:
        """After a (re)start or an election: act on UPDATEs that fell due, arm the timers."""
        for platform in list(self._books):
            if platform in self.topology.platforms:
                self._tick_platform(platform)
        self.refresh_gauges()

    def close(self) -> None:
        for platform in self._books:
            self._timers.cancel(TimerKind.PLATFORM, platform)

    # -- reads --------------------------------------------------------------------------------

    def book(self, platform: str) -> Book:
        return self._books.get(platform, Book())

    def books(self) -> Mapping[str, Book]:
        return self._books

    # -- what happened ------------------------------------------------------------------------

    def declared(self, name: str, outage_start: float, now: float, changes: Changes) -> None:
        platform = self.topology.targets[name].platform
        log.warning("outage_declared", target=name, platform=platform,
                    outage_start=outage_start)
        self._book_changed(platform, incidents.declared(
            self.book(platform), self._platform(platform), name, outage_start, now),
            now, changes)
        incident = self.book(platform).open
        if incident is not None and incident.outage_starts.get(name) == outage_start:
            changes.outages[(name, outage_start)] = OutageSpan(name, platform, outage_start,
                                                               None, incident.id)

    def restored(self, name: str, restored_at: float, now: float, changes: Changes, *,
                 platform: str | None = None) -> None:
        platform = platform or self.topology.targets[name].platform
        log.info("outage_ended", target=name, platform=platform, restored_at=restored_at)
        self._close_outage(name, platform, restored_at, changes)
        self._book_changed(platform, incidents.restored(
            self.book(platform), self._platform(platform), name, restored_at, now),
            now, changes)

    def forget(self, name: str, now: float, changes: Changes) -> None:
        """A target left the configuration: it can no longer hold an incident open, and
        its mails say it is no longer monitored (nobody saw it recover)."""
        for platform, book in list(self._books.items()):
            if book.open is not None and name in book.open.affected:
                self._close_outage(name, platform, now, changes)
                self._book_changed(platform, incidents.unmonitored(
                    book, self._platform(platform), name, now), now, changes)

    def _close_outage(self, name: str, platform: str, end: float, changes: Changes) -> None:
        """The ledger: the target's outage, as its open incident knows it, ends at ``end``."""
        incident = self.book(platform).open
        start = incident.outage_starts.get(name) if incident is not None else None
        if incident is None or start is None or name not in incident.affected:
            log.warning("outage_span_unknown", target=name, platform=platform, end=end)
            return
        changes.outages[(name, start)] = OutageSpan(name, platform, start, max(start, end),
                                                    incident.id)

    # -- an operator's changes: each one UPDATE (or OPEN, RESOLVED) mail, written at once ----

    def open_incident(self, platform: str, *, reported: tuple[str, ...], severity: int,
                      impact: str, since: float | None = None, ticket: str | None = None,
                      etr: float | None = None,
                      until_restored: bool = False) -> incidents.Incident:
        """An incident opened by hand (a customer's report): the same OPEN mail, UPDATEs."""
        if platform not in self.topology.platforms:
            raise incidents.Refused(f"no platform {platform!r} (known: "
                                    f"{', '.join(sorted(self.topology.platforms))})")
        now = self._clock.now().timestamp()
        step = incidents.opened(self.book(platform), self._platform(platform), now,
                                reported=reported, severity=severity, impact=impact,
                                since=since, ticket=ticket, etr=etr,
                                until_restored=until_restored)
        log.warning("incident_reported", platform=platform, reported=list(reported),
                    severity=severity, ticket=ticket)
        return self._operator_step(platform, step, now)

    def resolve_incident(self, incident_id: str, *, note: str | None = None) -> \
            incidents.Incident:
        platform, book = self._open(incident_id)
        now = self._clock.now().timestamp()
        return self._operator_step(platform, incidents.resolve(book, incident_id, now,
                                                               note=note), now)

    def set_severity(self, incident_id: str, level: int, reason: str) -> incidents.Incident:
        platform, book = self._open(incident_id)
        now = self._clock.now().timestamp()
        return self._operator_step(platform, incidents.set_severity(
            book, incident_id, level, reason, now), now)

    def change_incident(self, incident_id: str, *, etr: float | None = None,
                        interval: float | None = None, note: str | None = None,
                        ticket: str | None = None,
                        reported: tuple[str, ...] = ()) -> incidents.Incident:
        """An operator's change to an open incident: one UPDATE mail naming all of it."""
        platform, book = self._open(incident_id)
        now = self._clock.now().timestamp()
        return self._operator_step(platform, incidents.change(
            book, now, etr=etr, interval=interval, note=note, ticket=ticket,
            reported=reported), now)

    def _open(self, incident_id: str) -> tuple[str, Book]:
        for platform, book in self._books.items():
            if book.open is not None and book.open.id.lower() == incident_id.lower():
                return platform, book
        raise UnknownIncident(f"no open incident {incident_id!r}")

    def _operator_step(self, platform: str, step: incidents.Step,
                       now: float) -> incidents.Incident:
        book, notices = step
        changes = Changes()
        self._book_changed(platform, step, now, changes)
        self._writer.submit(changes)
        incident = notices[-1].incident if notices else book.open
        assert incident is not None
        return incident

    # -- the machinery ------------------------------------------------------------------------

    def _tick_platform(self, platform: str) -> None:
        now = self._clock.now().timestamp()
        changes = Changes()
        self._book_changed(platform, incidents.tick(self.book(platform),
                                                    self._platform(platform), now),
                           now, changes)
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
            observed = [Observed(s.target, s.start, s.duration, s.result, s.phase, s.location,
                                 self._threshold(name))
                        for name in sorted(incident.outage_starts)
                        for s in self._recent(name)]
            seen = {name: phrase for name in sorted(incident.outage_starts)
                    if (phrase := self._seen(name))}
            changes.envelopes += self._composer.incident(notice, observed, now, seen=seen)
        self._books[platform] = book
        deadline = incidents.next_deadline(book, self._platform(platform))
        self._timers.arm(TimerKind.PLATFORM, platform, deadline, now=now,
                         callback=lambda: self._tick_platform(platform))
        if notices:
            self.refresh_gauges()

    def _threshold(self, name: str) -> float | None:
        info = self.topology.targets.get(name)
        return info.rule.threshold if info is not None else None

    def _platform(self, name: str) -> Platform:
        """A platform as configured (one dropped by a reload keeps its incident's cadence)."""
        return self.topology.platforms.get(name, Platform(name, ()))

    def refresh_gauges(self) -> None:
        self._metrics.incidents_open.clear()
        for platform, book in self._books.items():
            if book.open is not None:
                self._metrics.incidents_open.labels(platform, str(book.open.severity)).set(1)
