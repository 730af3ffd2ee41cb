"""The incident desk: outages of targets to incident books, mails and the UPDATE cadence.

The desk is told that a target's outage was declared or has ended (by the engine from one
location's verdict, or by the cluster's leader from the locations' consensus), and by an
operator that an incident changed. It keeps one book per platform, has each notice's
messages composed, arms each platform's next UPDATE, and adds all of it to the change the
caller writes. It decides nothing about targets: that is the evaluator's (and the quorum's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from outagewatch.core import incidents
from outagewatch.core.incidents import Book, Platform
from outagewatch.core.render import Observed
from outagewatch.engine.timers import TimerKind
from outagewatch.errors import UnknownIncident
from outagewatch.store import Changes

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

    def restored(self, name: str, restored_at: float, now: float, changes: Changes, *,
                 platform: str | None = None) -> None:
        platform = platform or self.topology.targets[name].platform
        log.info("outage_ended", target=name, platform=platform, restored_at=restored_at)
        self._book_changed(platform, incidents.restored(
            self.book(platform), self._platform(platform), name, restored_at, now),
            now, changes)

    def forget(self, name: str, now: float, changes: Changes) -> None:
        """A target left the configuration: it can no longer hold an incident open."""
        for platform, book in list(self._books.items()):
            if book.open is not None and name in book.open.affected:
                self._book_changed(platform, incidents.restored(
                    book, self._platform(platform), name, now, now), now, changes)

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
            observed = [Observed(s.target, s.start, s.duration, s.result, s.phase, s.location)
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

    def _platform(self, name: str) -> Platform:
        """A platform as configured (one dropped by a reload keeps its incident's cadence)."""
        return self.topology.platforms.get(name, Platform(name, ()))

    def refresh_gauges(self) -> None:
        self._metrics.incidents_open.clear()
        for platform, book in self._books.items():
            if book.open is not None:
                self._metrics.incidents_open.labels(platform, str(book.open.severity)).set(1)
