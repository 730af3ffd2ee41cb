"""The history the stores keep, read back for people: availability reports, the status
page's charts and daily bars, the availability metric.

It reads the ledger (coverage, outages, rollups), the incidents and the maintenance windows
of a range from the store, turns them into ``core/availability`` ledgers and asks the pure
core for the figures, so that the report, the page and the metric share one definition:
- unplanned outages: the probes' declared outages, and the services an operator reported
  in an incident opened by hand (from its start until it was restored or resolved);
- maintenance: each window as it really held (to its end, or to its cancellation);
- failing: the 5-minute buckets with a BAD run (only planned outage is taken from them);
- covered: the times some location ran the service's probes (the rest is blind).
Components reported by hand (no probe watches them) count in the incident figures, not in
availability.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from outagewatch.core import availability
from outagewatch.core.availability import IncidentSpan, Ledger, Period
from outagewatch.core.incidents import Origin
from outagewatch.core.report import PlatformReport, Report, ServiceReport

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from datetime import tzinfo

    from outagewatch.core.incidents import Incident
    from outagewatch.core.maintenance import Window
    from outagewatch.store import StateStore
    from outagewatch.topology import Topology

BUCKET = 300.0  # seconds of a rollup


@dataclass(frozen=True, slots=True)
class Range:
    """What the store holds for some services over [start, end)."""

    ledgers: Mapping[str, Ledger]
    spans: tuple[IncidentSpan, ...]


class History:
    def __init__(self, store: StateStore, topology: Callable[[], Topology]) -> None:
        self._store = store
        self._topology = topology

    def platforms(self) -> list[str]:
        return sorted(self._topology().platforms)

    def zone(self, platform: str) -> tzinfo:
        return self._topology().platforms[platform].zone

    def services(self, platform: str) -> list[str]:
        return [s.name for s in self._topology().platforms[platform].services]

    async def range(self, platform: str, start: float, end: float, *, now: float) -> Range:
        """The ledgers of a platform's services and its incidents over [start, end)."""
        names = self.services(platform)
        coverage = await self._store.coverage(names, start, end)
        outages: dict[str, list[availability.Interval]] = {n: [] for n in names}
        for outage in await self._store.outages(names, start, end):
            if outage.target in outages:
                outages[outage.target].append(
                    (outage.start, now if outage.end is None else outage.end))
        failing: dict[str, list[availability.Interval]] = {n: [] for n in names}
        for rollup in await self._store.rollups(names, start, end):
            if rollup.bad and rollup.target in failing:
                failing[rollup.target].append((rollup.bucket, rollup.bucket + BUCKET))
        windows = await self._store.windows_between(start, end, platform)
        incidents = await self._store.incidents_between(start, end, platform)
        for incident in incidents:
            if incident.origin is Origin.OPERATOR:
                for name in incident.reported:
                    if name in outages:
                        outages[name].append((incident.started_at, _ended(incident) or now))
        ledgers = {name: Ledger(outages=tuple(outages[name]),
                                maintenance=tuple(_held(w) for w in windows if name in w.targets),
                                failing=tuple(failing[name]),
                                covered=tuple(coverage.get(name, ())))
                   for name in names}
        return Range(ledgers, tuple(span_of(i) for i in incidents))

    async def report(self, period_in: Callable[[tzinfo], Period], platforms: Sequence[str], *,
                     now: float) -> Report:
        """``period_in``: the period in a platform's zone (a month is its local month)."""
        blocks = []
        for platform in platforms:
            zone = self.zone(platform)
            period = period_in(zone)
            found = await self.range(platform, period.start, period.end, now=now)
            services = tuple(
                ServiceReport(name, availability.figures(period, ledger, now=now),
                              availability.incident_stats(
                                  period, [s for s in found.spans if name in s.services],
                                  now=now))
                for name, ledger in found.ledgers.items())
            daily = tuple(
                (f"{_local_date(day.start, zone)}",
                 availability.platform_figures(day, found.ledgers, now=now).availability)
                for day in availability.days(period, zone) if day.start < now)
            blocks.append(PlatformReport(
                platform, str(zone), availability.platform_figures(period, found.ledgers,
                                                                   now=now),
                availability.incident_stats(period, found.spans, now=now), services, daily,
                period.start, period.end))
        first = blocks[0] if blocks else None
        label = period_in(UTC).label
        return Report(label, first.start if first else 0.0, first.end if first else 0.0, now,
                      tuple(blocks))

    async def daily(self, platform: str, days: int, *,
                    now: float) -> dict[str, list[tuple[str, float | None]]]:
        """Per service, its availability on each of the last ``days`` local days (today
        included, counted up to now)."""
        zone = self.zone(platform)
        today = datetime.fromtimestamp(now, UTC).astimezone(zone).date()
        period = availability.custom_period(today - timedelta(days=days - 1),
                                            today + timedelta(days=1), zone)
        spans = availability.days(period, zone)
        found = await self.range(platform, period.start, period.end, now=now)
        return {name: [(_local_date(day.start, zone),
                        availability.figures(day, ledger, now=now).availability)
                       for day in spans]
                for name, ledger in found.ledgers.items()}

    async def response_times(self, names: Sequence[str], since: float, *,
                             now: float) -> dict[str, list[tuple[float, float | None, bool]]]:
        """Per service, its 5-minute buckets since ``since``: the slowest location's p95 and
        whether any run was BAD (an empty bucket: None, not a zero)."""
        start = since - since % BUCKET
        buckets: dict[str, dict[float, tuple[float | None, bool]]] = {n: {} for n in names}
        for rollup in await self._store.rollups(names, start, now):
            seen = buckets[rollup.target].get(rollup.bucket, (None, False))
            p95 = rollup.p95 if seen[0] is None else max(seen[0], rollup.p95)
            buckets[rollup.target][rollup.bucket] = (p95, seen[1] or rollup.bad > 0)
        steps = [start + i * BUCKET for i in range(int((now - start) // BUCKET) + 1)]
        return {name: [(at, *buckets[name].get(at, (None, False))) for at in steps]
                for name in names}


def span_of(incident: Incident) -> IncidentSpan:
    return IncidentSpan(id=incident.id, platform=incident.platform, severity=incident.severity,
                        start=incident.started_at, end=_ended(incident),
                        services=tuple(incident.involved), ticket=incident.ticket,
                        origin=incident.origin.value)


def _ended(incident: Incident) -> float | None:
    if incident.restored_at is not None:
        return incident.restored_at
    return incident.resolved_at


def _held(window: Window) -> availability.Interval:
    """A window as it really held: to its end, or to its cancellation (before its start: not
    at all, an empty interval)."""
    return (window.start, window.closed_at if window.closed_at is not None else window.end)


def _local_date(ts: float, zone: tzinfo) -> str:
    return f"{datetime.fromtimestamp(ts, UTC).astimezone(zone):%Y-%m-%d}"
