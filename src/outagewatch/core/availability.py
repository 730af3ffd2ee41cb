"""Availability over calendar periods (issue 13), as pure functions of the ledger the stores
keep: periods in a platform's time zone, a small algebra of intervals, the time-weighted
figures of a service and of a platform, and incident statistics. Times are Unix seconds; the
zone is passed in as a ``tzinfo`` and ``now`` is always an argument.

Periods are half-open ``[start, end)`` between local midnights of the platform's zone: a month
(``2026-11``), a quarter (``2026-Q4``), a year (``2026``) or a custom range of dates (end
exclusive). Years run from 2000 to 2100. A DST month is as long as it is (March 2026 in
Berlin: 743 hours), and its days are 23 or 25 hours long where the clocks change.

An interval is ``(start, end)`` = ``[start, end)``; intervals with ``end <= start`` are empty
and ignored. Interval lists may be unsorted and overlap; the algebra returns them sorted,
disjoint and merged where they touch.

The figures of one service over a period, from its ``Ledger``, at ``now``:

- Everything is clipped to the span ``S = [period.start, min(period.end, now))``: time after
  ``now`` is not counted at all, so ``period_s = |S|`` (a running month counts up to ``now``;
  a period in the future counts nothing).
- Maintenance ``M = union(maintenance)``.
- Unplanned outage ``U = union(outages) - M``. An outage counts even where the monitor was
  blind (reported by a customer, opened by hand): it is not blind time.
- Blind ``B = S - union(covered) - M - U``: the time the monitor did not see the service,
  outside maintenance and outages. Before monitoring began is simply not covered: blind.
- Planned outage ``P = (union(failing) | union(outages)) & M``: maintenance that did cause
  failures.
- ``observed = period - |M| - |B|`` and ``availability = 1 - |U| / observed``, or None when
  nothing was observed (``observed == 0``: a period entirely before monitoring began, in the
  future, or all maintenance).

The figures of a platform combine its services' sets (each computed as above):
``U`` = the union of the services' ``U``; ``M`` = the intersection of their ``M`` (the platform
is in maintenance only when all its services are); ``B`` = the intersection of their ``B``;
``P`` = the union of their ``P`` minus ``U``; the same formula. A platform with no services has
observed nothing: all its time is blind.

Incident statistics over a period: an incident counts in every period it overlaps (it started
before ``min(period.end, now)`` and had not ended by ``period.start``; one that started and
ended at the same moment counts where it started); the longest and the mean time to restore
are taken over the counted incidents that have ended (``end <= now``), each with its whole
duration, not clipped to the period.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

Interval = tuple[float, float]

FIRST_YEAR = 2000
LAST_YEAR = 2100
_EXAMPLE = "e.g. 2026-11 (a month), 2026-Q4 (a quarter) or 2026 (a year)"


# --- periods -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """``[start, end)`` in Unix seconds; ``label`` names it (``2026-11``, ``2026-Q4``, ``2026``,
    ``2026-11-03..2026-11-10``)."""

    start: float
    end: float
    label: str


def _midnight(day: date, zone: tzinfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def _span(first: date, end: date, zone: tzinfo, label: str) -> Period:
    return Period(_midnight(first, zone), _midnight(end, zone), label)


def _month(year: int, month: int, zone: tzinfo) -> Period:
    end = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return _span(date(year, month, 1), end, zone, f"{year:04d}-{month:02d}")


def _digits(text: str, n: int) -> bool:
    return len(text) == n and text.isascii() and text.isdigit()


def parse_period(text: str, zone: tzinfo) -> Period:
    """``2026-11``, ``2026-Q4`` or ``2026`` as a period in ``zone``; anything else is a
    ``ValueError`` of one line with an example."""
    head, dash, rest = text.strip().partition("-")
    if not _digits(head, 4) or (dash and not (
            _digits(rest, 2) or (len(rest) == 2 and rest[0] in "Qq" and _digits(rest[1], 1)))):
        raise ValueError(f"period {text!r} is not a month, quarter or year: {_EXAMPLE}")
    year = int(head)
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValueError(f"period {text!r}: year {year} is outside {FIRST_YEAR}..{LAST_YEAR}"
                         f" ({_EXAMPLE})")
    if not dash:
        return _span(date(year, 1, 1), date(year + 1, 1, 1), zone, f"{year:04d}")
    if rest[0] in "Qq":
        quarter = int(rest[1])
        if not 1 <= quarter <= 4:
            raise ValueError(f"period {text!r}: quarter Q{quarter} is not Q1..Q4 (e.g. 2026-Q4)")
        first = date(year, 3 * quarter - 2, 1)
        end = date(year + 1, 1, 1) if quarter == 4 else date(year, 3 * quarter + 1, 1)
        return _span(first, end, zone, f"{year:04d}-Q{quarter}")
    month = int(rest)
    if not 1 <= month <= 12:
        raise ValueError(f"period {text!r}: month {rest} is not 01..12 (e.g. 2026-11)")
    return _month(year, month, zone)


def custom_period(start: date, end: date, zone: tzinfo) -> Period:
    """The local days ``[start, end)``: from ``start`` 00:00 to ``end`` 00:00 in ``zone``."""
    if end <= start:
        raise ValueError(f"period {start.isoformat()}..{end.isoformat()}: the end must be after"
                         " the start (the end day is not included, e.g. 2026-11-01..2026-12-01)")
    if start.year < FIRST_YEAR or end > date(LAST_YEAR + 1, 1, 1):
        raise ValueError(f"period {start.isoformat()}..{end.isoformat()}: dates must lie in"
                         f" {FIRST_YEAR}..{LAST_YEAR} (e.g. 2026-11-01..2026-12-01)")
    return _span(start, end, zone, f"{start.isoformat()}..{end.isoformat()}")


def month_of(ts: float, zone: tzinfo) -> Period:
    """The calendar month in ``zone`` that holds ``ts``."""
    local = datetime.fromtimestamp(ts, UTC).astimezone(zone)
    return _month(local.year, local.month, zone)


def days(period: Period, zone: tzinfo) -> list[Period]:
    """The calendar days of ``period`` in ``zone`` (23 or 25 hours where the clocks change),
    each clipped to the period and labelled ``YYYY-MM-DD``."""
    out: list[Period] = []
    if period.end <= period.start:
        return out
    day = datetime.fromtimestamp(period.start, UTC).astimezone(zone).date()
    start = _midnight(day, zone)
    while start < period.end:
        following = day + timedelta(days=1)
        end = _midnight(following, zone)
        out.append(Period(max(start, period.start), min(end, period.end), day.isoformat()))
        day, start = following, end
    return out


# --- intervals ---------------------------------------------------------------------------


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint, merged where they touch; empty intervals dropped."""
    out: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def intersection(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """The time in both ``a`` and ``b``."""
    left, right = union(a), union(b)
    out: list[Interval] = []
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i][0], right[j][0])
        end = min(left[i][1], right[j][1])
        if start < end:
            out.append((start, end))
        if left[i][1] <= right[j][1]:
            i += 1
        else:
            j += 1
    return out


def difference(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """The time in ``a`` and not in ``b``."""
    cut = union(b)
    out: list[Interval] = []
    j = 0
    for start, end in union(a):
        while j < len(cut) and cut[j][1] <= start:
            j += 1
        at, k = start, j
        while k < len(cut) and cut[k][0] < end:
            if cut[k][0] > at:
                out.append((at, cut[k][0]))
            at = max(at, cut[k][1])
            k += 1
        if at < end:
            out.append((at, end))
    return out


def measure(intervals: Iterable[Interval]) -> float:
    """Seconds covered by ``intervals`` (overlaps counted once)."""
    return math.fsum(end - start for start, end in union(intervals))


# --- figures -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ledger:
    """One service (target) as the stores give it."""

    outages: Sequence[Interval] = ()  # unplanned: declared -> restored (open: ends at `now`)
    maintenance: Sequence[Interval] = ()  # windows holding it, as they really ran
    failing: Sequence[Interval] = ()  # its runs were BAD; inside maintenance = planned outage
    covered: Sequence[Interval] = ()  # the monitor saw it; the rest of the period is blind


@dataclass(frozen=True, slots=True)
class Figures:
    period_s: float  # the period up to `now`
    maintenance_s: float
    blind_s: float
    unplanned_s: float
    planned_s: float
    observed_s: float  # period - maintenance - blind
    availability: float | None  # 1 - unplanned / observed; None when nothing was observed


@dataclass(frozen=True, slots=True)
class _Sets:
    span: list[Interval]
    maintenance: list[Interval]
    blind: list[Interval]
    unplanned: list[Interval]
    planned: list[Interval]


def _clipped(period: Period, now: float) -> list[Interval]:
    return union([(period.start, min(period.end, now))])


def _sets(span: list[Interval], ledger: Ledger) -> _Sets:
    maintenance = intersection(ledger.maintenance, span)
    unplanned = difference(intersection(ledger.outages, span), maintenance)
    blind = difference(difference(difference(span, ledger.covered), maintenance), unplanned)
    planned = intersection([*ledger.failing, *ledger.outages], maintenance)
    return _Sets(span, maintenance, blind, unplanned, planned)


def _figures(sets: _Sets) -> Figures:
    period_s = measure(sets.span)
    maintenance_s, blind_s = measure(sets.maintenance), measure(sets.blind)
    unplanned_s = measure(sets.unplanned)
    observed_s = max(0.0, period_s - maintenance_s - blind_s)
    availability = (min(1.0, max(0.0, 1.0 - unplanned_s / observed_s)) if observed_s > 0
                    else None)
    return Figures(period_s=period_s, maintenance_s=maintenance_s, blind_s=blind_s,
                   unplanned_s=unplanned_s, planned_s=measure(sets.planned),
                   observed_s=observed_s, availability=availability)


def figures(period: Period, ledger: Ledger, *, now: float) -> Figures:
    """One service's figures over ``period`` up to ``now`` (see the module's definitions)."""
    return _figures(_sets(_clipped(period, now), ledger))


def platform_figures(period: Period, ledgers: Mapping[str, Ledger], *, now: float) -> Figures:
    """A platform's figures over ``period`` up to ``now`` from its services' ledgers."""
    span = _clipped(period, now)
    each = [_sets(span, ledger) for ledger in ledgers.values()]
    if not each:
        return _figures(_Sets(span, [], span, [], []))
    unplanned = union(i for s in each for i in s.unplanned)
    maintenance, blind = each[0].maintenance, each[0].blind
    for s in each[1:]:
        maintenance = intersection(maintenance, s.maintenance)
        blind = intersection(blind, s.blind)
    planned = difference((i for s in each for i in s.planned), unplanned)
    return _figures(_Sets(span, maintenance, blind, unplanned, planned))


# --- incidents ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncidentSpan:
    id: str
    platform: str
    severity: int
    start: float
    end: float | None  # restored_at or resolved_at; None while open
    services: tuple[str, ...]
    ticket: str | None = None
    origin: str = "probes"


@dataclass(frozen=True, slots=True)
class IncidentStats:
    count: int
    by_severity: Mapping[int, int]  # severity -> count, by severity
    longest_s: float | None  # over the counted incidents that ended; None: none ended
    mttr_s: float | None  # mean time to restore over the same
    incidents: tuple[IncidentSpan, ...]  # those overlapping the period, by start


def _overlaps(span: IncidentSpan, start: float, end: float) -> bool:
    if span.start >= end:
        return False
    return span.start >= start or span.end is None or span.end > start


def incident_stats(period: Period, spans: Sequence[IncidentSpan], *, now: float) -> IncidentStats:
    """The incidents overlapping ``period`` up to ``now`` and their statistics."""
    counted = tuple(sorted((s for s in spans if _overlaps(s, period.start, min(period.end, now))),
                           key=lambda s: (s.start, s.id)))
    by_severity: dict[int, int] = {}
    for span in sorted(counted, key=lambda s: s.severity):
        by_severity[span.severity] = by_severity.get(span.severity, 0) + 1
    durations = [max(0.0, s.end - s.start) for s in counted if s.end is not None and s.end <= now]
    return IncidentStats(
        count=len(counted), by_severity=by_severity,
        longest_s=max(durations) if durations else None,
        mttr_s=math.fsum(durations) / len(durations) if durations else None,
        incidents=counted)
