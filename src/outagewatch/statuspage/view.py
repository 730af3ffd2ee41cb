"""The status page as data: what a ``StatusSource`` gives, turned into one page's view model.
Pure: no I/O, ``now`` passed in.

Wording follows what operators and their customers know from other status pages: services
are "Operational", "Degraded performance" (BAD runs, not yet an outage), "Major outage" or
"Under maintenance"; incidents are "Investigating", "Identified" (an ETR was given),
"Monitoring" (every service back, not resolved yet) or "Resolved".

Charts are inline SVG, each with a text alternative: the 24 h response-time chart (the 95th
percentile per quarter of an hour against the threshold; quarters with BAD runs marked) and
the daily availability bars (one ``<title>`` per bar: the date and the availability, or "no
data"). The public view leaves out hostnames, error details, internal notes, tickets and
links to the operator API, and masks any hostname found in the texts it does show.
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

from markupsafe import Markup

from outagewatch.core.report import percent

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from outagewatch.statuspage.source import IncidentView, ServiceState, WindowView

DAY = 86400.0
HISTORY_DAYS = 90  # daily bars, and resolved incidents shown
CHART_SPAN = DAY  # the response-time chart's reach
CHART_COLUMNS = 96  # quarters of an hour
MIN_REFRESH, MAX_REFRESH = 10, 3600

STATE_LABELS = {
    "operational": "Operational",
    "degraded": "Degraded performance",
    "outage": "Major outage",
    "maintenance": "Under maintenance",
    "unknown": "No data yet",
}
TIMELINE_LABELS = {"open": "OPEN", "update": "UPDATE", "resolved": "RESOLVED",
                   "note": "NOTE", "etr": "ETR"}
HIDDEN = "[hidden]"

# chart geometry (viewBox units)
_COL_W = 3
_CHART_H = 40
_BAR_W, _BAR_GAP, _BAR_H = 3, 1, 30


@dataclass(frozen=True, slots=True)
class ServiceRow:
    name: str
    type: str
    state: str  # operational, degraded, outage, maintenance, unknown (a CSS class too)
    label: str  # the state in words
    host: str | None  # None in the public view
    detail: str | None  # None in the public view
    chart: Markup
    bars: Markup
    availability: str  # "99.95 % over 90 days" or "no data"


@dataclass(frozen=True, slots=True)
class PlatformBlock:
    name: str
    state: str
    label: str
    services: tuple[ServiceRow, ...]


@dataclass(frozen=True, slots=True)
class Moment:
    iso: str  # for <time datetime>
    text: str  # in the platform's zone


@dataclass(frozen=True, slots=True)
class TimelineRow:
    at: Moment
    kind: str
    label: str
    text: str


@dataclass(frozen=True, slots=True)
class IncidentBlock:
    id: str
    platform: str
    severity: int
    state: str
    label: str
    start: Moment
    end: Moment | None
    duration: str
    services: tuple[str, ...]
    etr: Moment | None
    impact: str
    ticket: str | None  # None in the public view
    timeline: tuple[TimelineRow, ...]  # newest first
    api_link: str | None  # None in the public view


@dataclass(frozen=True, slots=True)
class WindowBlock:
    id: str
    platform: str
    services: tuple[str, ...]
    start: Moment
    end: Moment
    kind: str
    label: str  # "In progress" or "Scheduled"
    running: bool
    description: str
    impact: str


@dataclass(frozen=True, slots=True)
class Page:
    title: str
    public: bool
    refresh: int | None
    generated: Moment
    state: str
    label: str  # the banner
    platforms: tuple[PlatformBlock, ...]
    open_incidents: tuple[IncidentBlock, ...]
    windows: tuple[WindowBlock, ...]  # running first, then upcoming by start
    resolved_incidents: tuple[IncidentBlock, ...]  # newest first
    feed_url: str


def refresh_of(text: str | None) -> int | None:
    """``?refresh=60``: seconds between reloads, held within 10..3600; ValueError when not
    a whole number."""
    if text is None or text == "":
        return None
    try:
        seconds = int(text)
    except ValueError:
        raise ValueError(f"refresh: expected whole seconds ({MIN_REFRESH}..{MAX_REFRESH}), "
                         f"e.g. refresh=60") from None
    return max(MIN_REFRESH, min(MAX_REFRESH, seconds))


def build_page(*, title: str, public: bool, now: float, platforms: Mapping[str, tzinfo],
               services: Sequence[ServiceState],
               response_times: Mapping[str, Sequence[tuple[float, float | None, bool]]],
               daily: Mapping[str, Sequence[tuple[str, float | None]]],
               incidents: Sequence[IncidentView], windows: Sequence[WindowView],
               refresh: int | None = None, feed_url: str = "/feed.atom") -> Page:
    hosts = sorted({s.host for s in services if s.host}, key=len, reverse=True)

    def masked(text: str) -> str:
        if not public:
            return text
        for host in hosts:
            text = text.replace(host, HIDDEN)
        return text

    by_platform: dict[str, list[ServiceRow]] = {name: [] for name in platforms}
    for service in services:
        by_platform.setdefault(service.platform, []).append(_row(
            service, public=public, now=now,
            times=response_times.get(service.name, ()), days=daily.get(service.name, ())))
    blocks = tuple(_platform(name, tuple(rows)) for name, rows in by_platform.items())
    states = {b.state for b in blocks}

    def zone(platform: str) -> tzinfo:
        return platforms.get(platform, UTC)

    shown = [_incident(i, zone(i.platform), public=public, now=now, masked=masked)
             for i in incidents if i.state != "resolved" or
             (i.end is not None and i.end >= now - HISTORY_DAYS * DAY)]
    open_ = tuple(sorted((i for i in shown if i.state != "resolved"),
                         key=lambda b: b.start.iso))
    resolved = tuple(sorted((i for i in shown if i.state == "resolved"),
                            key=lambda b: b.start.iso, reverse=True))
    ahead = [w for w in windows if w.state in {"scheduled", "active"} and w.end > now]
    ahead.sort(key=lambda w: (not _running(w, now), w.start, w.id))
    return Page(
        title=title, public=public, refresh=refresh, generated=_moment(now, UTC),
        state=_overall(states), label=_banner(states, incidents=len(open_)),
        platforms=blocks, open_incidents=open_,
        windows=tuple(_window(w, zone(w.platform), now=now, masked=masked) for w in ahead),
        resolved_incidents=resolved, feed_url=feed_url)


# -- services ---------------------------------------------------------------------------------

def _row(service: ServiceState, *, public: bool, now: float,
         times: Sequence[tuple[float, float | None, bool]],
         days: Sequence[tuple[str, float | None]]) -> ServiceRow:
    return ServiceRow(
        name=service.name, type=service.type, state=service.state,
        label=STATE_LABELS.get(service.state, service.state),
        host=None if public else service.host, detail=None if public else service.detail,
        chart=response_chart(times, threshold=service.threshold_s, now=now),
        bars=daily_bars(days), availability=_availability_text(days))


def _platform(name: str, rows: tuple[ServiceRow, ...]) -> PlatformBlock:
    states = [r.state for r in rows]
    if "outage" in states:
        everything = all(s == "outage" for s in states)
        return PlatformBlock(name, "outage", "Major outage" if everything
                             else "Partial outage", rows)
    for state in ("degraded", "maintenance"):
        if state in states:
            return PlatformBlock(name, state, STATE_LABELS[state], rows)
    if states and all(s == "unknown" for s in states):
        return PlatformBlock(name, "unknown", STATE_LABELS["unknown"], rows)
    return PlatformBlock(name, "operational", "Operational", rows)


def _overall(states: set[str]) -> str:
    for state in ("outage", "degraded", "maintenance", "operational"):
        if state in states:
            return state
    return "unknown"


def _banner(states: set[str], *, incidents: int) -> str:
    if "outage" in states or incidents:
        return "Some systems have a major outage" if "outage" in states else (
            "An incident is in progress")
    if "degraded" in states:
        return "Some systems have degraded performance"
    if "maintenance" in states:
        return "Maintenance in progress"
    if states <= {"unknown"}:
        return "No data yet"
    return "All systems operational"


def _availability_text(days: Sequence[tuple[str, float | None]]) -> str:
    """How many days have a figure and the worst of them (a mean of daily ratios is not the
    period's time-weighted availability: the report gives that)."""
    known = [(a, day) for day, a in days if a is not None]
    if not known:
        return "no data"
    worst, day = min(known)
    return f"{len(known)} days with data, the lowest {_percent(worst)} on {day}"


def _percent(ratio: float) -> str:
    return percent(ratio, 2)  # never round a loss away


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def response_chart(times: Sequence[tuple[float, float | None, bool]], *, threshold: float,
                   now: float) -> Markup:
    """The last 24 h of response times (p95 per quarter of an hour of the clock, the last
    one the current; the highest of the source's buckets in it) against the threshold, BAD
    quarters marked in red; with a text alternative. No data at all draws an empty frame
    saying so.

    The page draws one per service, 1,000 in 200 ms (bench/status_page.py): charts are
    remembered by their data, which changes once a bucket for most services."""
    quarter = CHART_SPAN / CHART_COLUMNS
    return _chart(tuple(times), threshold, (now // quarter + 1) * quarter)


@functools.lru_cache(maxsize=8192)
def _chart(times: tuple[tuple[float, float | None, bool], ...], threshold: float,
           end: float) -> Markup:
    start = end - CHART_SPAN
    per_second = CHART_COLUMNS / CHART_SPAN
    columns = CHART_COLUMNS
    p95: list[float | None] = [None] * columns
    bad = [False] * columns
    for at, value, was_bad in times:
        column = int((at - start) * per_second)
        if 0 <= column < columns:
            if value is not None:
                seen = p95[column]
                if seen is None or value > seen:
                    p95[column] = value
            if was_bad:
                bad[column] = True
    known = [v for v in p95 if v is not None]
    width = columns * _COL_W
    if not known and not any(bad):
        label = "Response time over the last 24 hours: no data"
        return Markup(  # noqa: S704 - built from numbers and constant text only
            f'<svg class="chart" viewBox="0 0 {width} {_CHART_H}" role="img" '
            f'aria-label="{label}" preserveAspectRatio="none"><title>{label}</title>'
            f'<rect class="nodata" x="0" y="0" width="{width}" height="{_CHART_H}"/>'
            f'<text x="{width / 2:g}" y="{_CHART_H / 2 + 4:g}" text-anchor="middle">'
            f"no data</text></svg>")
    top = max(threshold * 1.5, *known) if known else threshold * 1.5
    scale = (_CHART_H - 2) / (top or 1.0)
    base = _CHART_H - 1
    line: list[str] = []
    pen_down = False
    for x, value in zip(_COLUMN_X, p95, strict=True):
        if value is None:
            pen_down = False
            continue
        # a step across the column (whole units: a sparkline): a lone quarter-hour shows too
        level = base - int(value * scale + 0.5)
        line.append(f"{'L' if pen_down else 'M'}{x} {level}h{_COL_W}")
        pen_down = True
    marks = "".join([_BAD_MARKS[c] for c in range(columns) if bad[c]])
    bad_count = sum(bad)
    limit = base - round(threshold * scale)
    label = (f"Response time (95th percentile) over the last 24 hours: highest "
             f"{_seconds(max(known)) if known else 'unknown'}, threshold {_seconds(threshold)}"
             f", {bad_count} of {CHART_COLUMNS} quarter-hours with slow or failed runs")
    return Markup(  # noqa: S704 - built from numbers and constant text only
        f'<svg class="chart" viewBox="0 0 {width} {_CHART_H}" role="img" '
        f'aria-label="{label}" preserveAspectRatio="none"><title>{label}</title>'
        f'<line class="threshold" x1="0" x2="{width}" y1="{limit}" y2="{limit}"/>'
        f'<path class="p95" d="{"".join(line)}"/>'
        + (f'<path class="bad" d="{marks}"/>' if marks else "")
        + "</svg>")


_COLUMN_X = [c * _COL_W for c in range(CHART_COLUMNS)]
_BAD_MARKS = [f"M{x} {_CHART_H - 4}h{_COL_W}v4h-{_COL_W}z" for x in _COLUMN_X]
MAX_BARS = 400  # a report's days (a year, or a range of up to 400 days)
_BAR_OPEN = [f'<rect x="{i * (_BAR_W + _BAR_GAP)}" width="{_BAR_W}" height="{_BAR_H}" class="'
             for i in range(MAX_BARS)]


@functools.lru_cache(maxsize=4 * HISTORY_DAYS)
def _day_text(day: str) -> str:
    return html.escape(day)


def daily_bars(days: Sequence[tuple[str, float | None]],
               most: int = HISTORY_DAYS) -> Markup:
    """One bar per day, oldest left, each with its date and availability (or "no data") as
    its title; the whole with a summary as its label. Remembered by their data, which
    changes once a day (or once a bucket for today's bar). ``most``: the latest days shown
    (the page: 90; a report: all of its period)."""
    return _bars(tuple(days[-min(most, MAX_BARS):]))


@functools.lru_cache(maxsize=8192)
def _bars(shown: tuple[tuple[str, float | None], ...]) -> Markup:
    parts: list[str] = []
    add = parts.append
    for opening, (day, availability) in zip(_BAR_OPEN, shown, strict=False):
        if availability is None:
            add(f'{opening}nd"><title>{_day_text(day)}: no data</title></rect>')
            continue
        cls = "ok" if availability >= 0.9995 else "dg" if availability >= 0.99 else "out"
        add(f'{opening}{cls}"><title>{_day_text(day)}: {percent(availability, 2)}'
            '</title></rect>')
    count = len(shown)
    label = (f"Daily availability, last {count} days: {_availability_text(shown)}"
             if count else "Daily availability: no data")
    width = max(count * (_BAR_W + _BAR_GAP) - _BAR_GAP, 1)
    return Markup(  # noqa: S704 - dates escaped, the rest numbers and constant text
        f'<svg class="bars" viewBox="0 0 {width} {_BAR_H}" role="group" '
        f'aria-label="{html.escape(label)}" preserveAspectRatio="none">'
        f'{"".join(parts)}</svg>')


# -- incidents and windows --------------------------------------------------------------------

def _moment(ts: float, zone: tzinfo) -> Moment:
    moment = datetime.fromtimestamp(ts, UTC)
    local = moment.astimezone(zone)
    return Moment(f"{moment:%Y-%m-%dT%H:%M:%SZ}", f"{local:%Y-%m-%d %H:%M %Z}")


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return "less than a minute"
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{minutes} min"]
    return " ".join(parts[:2]) if days else " ".join(parts)


def _incident_label(incident: IncidentView) -> str:
    if incident.state == "resolved":
        return "Resolved"
    if incident.state == "restored":
        return "Monitoring"
    return "Identified" if incident.etr is not None else "Investigating"


# What the public view says of a mail: a mail's own words carry the operators' reasons,
# tickets and probe details, which stay internal.
PUBLIC_TEXT = {"open": "We are investigating an outage of the services named above.",
               "update": "We are working on it; the next update follows.",
               "resolved": "The services are restored."}


def _incident(incident: IncidentView, zone: tzinfo, *, public: bool, now: float,
              masked: Callable[[str], str]) -> IncidentBlock:
    timeline = tuple(
        TimelineRow(_moment(at, zone), kind, TIMELINE_LABELS.get(kind, kind.upper()),
                    PUBLIC_TEXT[kind] if public and kind in PUBLIC_TEXT else masked(text))
        for at, kind, text in sorted(incident.timeline, key=lambda e: e[0], reverse=True)
        if not (public and kind == "note"))
    end = incident.end
    return IncidentBlock(
        id=incident.id, platform=incident.platform, severity=incident.severity,
        state=incident.state, label=_incident_label(incident),
        start=_moment(incident.start, zone),
        end=None if end is None else _moment(end, zone),
        duration=_duration((now if end is None else end) - incident.start),
        services=incident.services,
        etr=None if incident.etr is None else _moment(incident.etr, zone),
        impact=masked(incident.impact), ticket=None if public else incident.ticket,
        timeline=timeline,
        api_link=None if public else f"/api/v1/incidents/{incident.id}")


def _running(window: WindowView, now: float) -> bool:
    return window.state == "active" or (window.state == "scheduled"
                                        and window.start <= now < window.end)


def _window(window: WindowView, zone: tzinfo, *, now: float,
            masked: Callable[[str], str]) -> WindowBlock:
    running = _running(window, now)
    return WindowBlock(
        id=window.id, platform=window.platform, services=window.services,
        start=_moment(window.start, zone), end=_moment(window.end, zone),
        kind="Emergency maintenance" if window.kind == "emergency" else "Planned maintenance",
        label="In progress" if running else "Scheduled", running=running,
        description=masked(window.description), impact=masked(window.impact))
