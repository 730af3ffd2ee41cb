"""The history the stores keep, read back for people: availability reports, the status
page's charts and daily bars, the availability metric.

It reads the ledger (coverage, outages, rollups), the incidents and the maintenance windows
of a range from the store, turns them into ``core/availability`` ledgers and asks the pure
core for the figures, so that the report, the page and the metric share one definition:
- unplanned outages: the probes' declared outages while the probes watched (the monitor's
  own gaps inside an outage are blind, not downtime), and the services an operator reported
  in an incident opened by hand (from its start until it was restored or resolved: a
  customer's report counts even where the monitor saw nothing);
- maintenance: each window as it really held (from its start, never before it was
  registered, to its end or its cancellation; cancelled before its start: not at all);
- failing: the 5-minute buckets with a BAD run inside maintenance (planned outage is the only
  figure taken from them, so only those buckets are read);
- covered: the times some location ran the service's probes (the rest is blind).
Components reported by hand (no probe watches them) count in the incident figures, not in
availability.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from outagewatch.core import availability
from outagewatch.core.availability import IncidentSpan, Ledger, Period
from outagewatch.core.incidents import Origin
from outagewatch.core.maintenance import WindowState
from outagewatch.core.report import PlatformReport, Report, ServiceReport
from outagewatch.core.rollup import BUCKET

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from datetime import tzinfo

    from outagewatch.core.incidents import Incident
    from outagewatch.core.maintenance import Window
    from outagewatch.store import StateStore
    from outagewatch.topology import Topology

SETTLED = 3600.0  # a day over for this long no longer changes: its figures are remembered
SERIES_SETTLED = 600.0  # a bucket this old has all its runs (each reports within its timeout)
CACHE_TTL = 600.0  # seconds what History remembers is trusted before it reads it again


@dataclass(frozen=True, slots=True)
class Range:
    """What the store holds for some services over [start, end)."""

    ledgers: Mapping[str, Ledger]
    spans: tuple[IncidentSpan, ...]


class History:
    def __init__(self, store: StateStore, topology: Callable[[], Topology]) -> None:
        self._store = store
        self._topology = topology
        # per platform and local day that is over: its services' availability (a past day
        # does not change; the page asks for 90 of them on every view)
        self._days: dict[tuple[str, float], dict[str, float | None]] = {}
        self._day_rows: dict[tuple[str, str], tuple[tuple[float, int],
                                                    list[tuple[str, float | None]]]] = {}
        # per target, the response-time chart's buckets that no longer change, and where
        # they end: the page reads only the newer ones again
        self._series: dict[str, dict[float, tuple[float, bool]]] = {}
        self._series_upto = 0.0
        self._series_lock = threading.Lock()
        self._cached_at: float | None = None  # when the caches above were begun
        self._settled_rows: dict[str, tuple[tuple[float, float],
                                            list[tuple[float, float | None, bool]]]] = {}

    def _fresh(self, now: float) -> None:
        """Everything remembered is forgotten every ``CACHE_TTL``: what changes the past
        after the fact (an incident opened by hand with an earlier start, rows written late
        after a store outage) shows within that time, without tracking each cause."""
        if self._cached_at is None or not 0 <= now - self._cached_at < CACHE_TTL:
            with self._series_lock:
                self._days.clear()
                self._day_rows.clear()
                self._series.clear()
                self._settled_rows.clear()
                self._series_upto = 0.0
            self._cached_at = now

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
            if outage.target in outages:  # declared by the probes: only while they watched
                outages[outage.target] += availability.intersection(
                    [(outage.start, now if outage.end is None else outage.end)],
                    coverage.get(outage.target, ()))
        windows = await self._store.windows_between(start, end, platform)
        failing = await self._failing(names, windows, start, end)
        incidents = await self._store.incidents_between(start, end, platform)
        for incident in incidents:  # what customers reported counts as it was reported
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

    async def _failing(self, names: Sequence[str], windows: Sequence[Window], start: float,
                       end: float) -> dict[str, list[availability.Interval]]:
        """The BAD buckets inside maintenance: planned outage is the only figure taken from
        them, so only those buckets are read."""
        failing: dict[str, list[availability.Interval]] = {n: [] for n in names}
        for window in windows:
            held_from, held_to = _held(window)
            held = [n for n in window.targets if n in failing]
            if held_to <= held_from or not held:
                continue
            for target, bucket, _, bad in await self._store.series(
                    held, max(start, held_from), min(end, held_to)):
                if bad:
                    failing[target].append((bucket, bucket + BUCKET))
        return failing

    async def report(self, period_in: Callable[[tzinfo], Period], platforms: Sequence[str], *,
                     now: float, daily: bool = False) -> Report:
        """``period_in``: the period in a platform's zone (a month is its local month);
        ``daily``: each service's availability per day too (the HTML report's bars)."""
        blocks = []
        for platform in platforms:
            zone = self.zone(platform)
            period = period_in(zone)
            found = await self.range(platform, period.start, period.end, now=now)
            blocks.append(await asyncio.to_thread(functools.partial(
                _platform_report, platform, zone, period, found, now=now, per_service=daily)))
        first = blocks[0] if blocks else None
        label = period_in(UTC).label
        return Report(label, first.start if first else 0.0, first.end if first else 0.0, now,
                      tuple(blocks))

    async def daily(self, platform: str, days: int, *,
                    now: float) -> dict[str, list[tuple[str, float | None]]]:
        """Per service, its availability on each of the last ``days`` local days (today
        included, counted up to now). Days over for an hour are remembered."""
        self._fresh(now)
        zone = self.zone(platform)
        names = self.services(platform)
        today = datetime.fromtimestamp(now, UTC).astimezone(zone).date()
        period = availability.custom_period(today - timedelta(days=days - 1),
                                            today + timedelta(days=1), zone)
        spans = availability.days(period, zone)
        missing = [d for d in spans if not set(names) <= self._days.get((platform, d.start),
                                                                         {}).keys()]
        if missing:
            found = await self.range(platform, missing[0].start, missing[-1].end, now=now)
            computed = await asyncio.to_thread(_days_of, missing, found.ledgers, now)
            for day, figures in zip(missing, computed, strict=True):
                if day.end <= now - SETTLED:
                    self._days[(platform, day.start)] = figures
            fresh = dict(zip((d.start for d in missing), computed, strict=True))
        else:
            fresh = {}
        oldest = spans[0].start - 30 * 86400
        for key in [k for k in self._days if k[1] < oldest]:
            del self._days[key]
        labels = [_local_date(day.start, zone) for day in spans]
        tables = [fresh.get(d.start) or self._days[(platform, d.start)] for d in spans]
        settled = sum(1 for d in spans if (platform, d.start) in self._days)
        made_for = (spans[0].start, settled)
        for gone in [k for k in self._day_rows if k[0] == platform and k[1] not in names]:
            del self._day_rows[gone]  # removed by a reload
        out = {}
        for name in names:  # the settled days' part is built once a day, not once a view
            made = self._day_rows.get((platform, name))
            if made is None or made[0] != made_for:
                made = (made_for, [(label, table.get(name)) for label, table in
                              zip(labels[:settled], tables[:settled], strict=True)])
                self._day_rows[(platform, name)] = made
            out[name] = made[1] + [(label, table.get(name)) for label, table in
                                   zip(labels[settled:], tables[settled:], strict=True)]
        return out

    async def response_times(self, names: Sequence[str], since: float, *,
                             now: float) -> dict[str, list[tuple[float, float | None, bool]]]:
        """Per service, its 5-minute buckets since ``since``: the slowest location's p95 and
        whether any run was BAD (an empty bucket: None, not a zero)."""
        self._fresh(now)
        start = since - since % BUCKET
        fetch_from = max(start, self._series_upto)
        rows = await self._store.series(names, fetch_from, now)
        settled = now - now % BUCKET - SERIES_SETTLED
        return await asyncio.to_thread(self._merge_series, names, rows, start, now, settled)

    def _merge_series(self, names: Sequence[str],
                      rows: Sequence[tuple[str, float, float, bool]], start: float, now: float,
                      settled: float) -> dict[str, list[tuple[float, float | None, bool]]]:
        """Buckets before ``settled`` no longer change (a run reports at most its timeout
        late): they are kept, and only later ones are read again on the next call. Runs in a
        thread, one at a time."""
        with self._series_lock:
            return self._merged(names, rows, start, now, settled)

    def _merged(self, names: Sequence[str], rows: Sequence[tuple[str, float, float, bool]],
                start: float, now: float,
                settled: float) -> dict[str, list[tuple[float, float | None, bool]]]:
        recent: dict[str, dict[float, tuple[float, bool]]] = {}
        for target, bucket, p95, bad in rows:
            if bucket < self._series_upto:
                continue
            into = self._series if bucket < settled else recent
            into.setdefault(target, {})[bucket] = (p95, bad)
        self._series_upto = max(self._series_upto, settled)
        known = self._topology().targets
        for gone in [n for n in self._series if n not in known]:  # removed by a reload
            del self._series[gone]
            self._settled_rows.pop(gone, None)
        for buckets in self._series.values():  # nothing older than asked for
            for bucket in [b for b in buckets if b < start]:
                del buckets[bucket]
        steps = [start + i * BUCKET for i in range(int((now - start) // BUCKET) + 1)]
        before = [at for at in steps if at < settled]
        after = steps[len(before):]
        empty: tuple[float | None, bool] = (None, False)
        out = {}
        for name in names:
            kept, fresh = self._series.get(name, {}), recent.get(name, {})
            made = self._settled_rows.get(name)
            if made is None or made[0] != (start, settled):  # once a bucket, not a view
                made = ((start, settled), [(at, *kept.get(at, empty)) for at in before])
                self._settled_rows[name] = made
            out[name] = made[1] + [(at, *(fresh.get(at) or kept.get(at) or empty))
                                   for at in after]
        return out


def _platform_report(platform: str, zone: tzinfo, period: Period, found: Range, *,
                     now: float, per_service: bool) -> PlatformReport:
    days = [day for day in availability.days(period, zone) if day.start < now]
    labels = [_local_date(day.start, zone) for day in days]
    services = tuple(
        ServiceReport(name, availability.figures(period, ledger, now=now),
                      availability.incident_stats(
                          period, [s for s in found.spans if name in s.services], now=now),
                      tuple((label, availability.figures(day, ledger, now=now).availability)
                            for label, day in zip(labels, days, strict=True))
                      if per_service else ())
        for name, ledger in found.ledgers.items())
    daily = tuple((label, availability.platform_figures(day, found.ledgers, now=now)
                   .availability) for label, day in zip(labels, days, strict=True))
    return PlatformReport(platform, str(zone),
                          availability.platform_figures(period, found.ledgers, now=now),
                          availability.incident_stats(period, found.spans, now=now), services,
                          daily, period.start, period.end)


def _days_of(days: Sequence[Period], ledgers: Mapping[str, Ledger],
             now: float) -> list[dict[str, float | None]]:
    return [{name: availability.figures(day, ledger, now=now).availability
             for name, ledger in ledgers.items()} for day in days]


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
    """A window as it really held: from its start, but never before it was registered (a
    window entered afterwards does not rewrite what already happened), to its end or its
    cancellation; cancelled before it began, not at all (an empty interval)."""
    start = max(window.start, window.registered_at)
    if window.state is WindowState.CANCELLED and window.closed_at is None:
        return (start, start)
    return (start, window.closed_at if window.closed_at is not None else window.end)


def _local_date(ts: float, zone: tzinfo) -> str:
    return f"{datetime.fromtimestamp(ts, UTC).astimezone(zone):%Y-%m-%d}"
