"""The availability report (issue 13) as data and as text, CSV and JSON. Pure.

A report covers one period and one or more platforms: per platform and per service the
time-weighted figures of ``core/availability`` (availability, unplanned outage, planned
outage, maintenance and blind minutes), the incidents by severity, the longest one and the
mean time to restore, and the list of incidents. The HTML form is the status page's
(``statuspage``), with the same charts.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from outagewatch.core.render import Message, Thread, ThreadKind
from outagewatch.model import iso_utc

if TYPE_CHECKING:
    from collections.abc import Sequence

    from outagewatch.core.availability import Figures, IncidentSpan, IncidentStats
    from outagewatch.core.maintenance import Calendar

CSV_COLUMNS = ("period", "platform", "service", "availability", "unplanned_min",
               "planned_min", "maintenance_min", "blind_min", "observed_min", "incidents",
               "sev1", "sev2", "sev3", "longest_min", "mttr_min")


@dataclass(frozen=True, slots=True)
class ServiceReport:
    name: str
    figures: Figures
    stats: IncidentStats  # the incidents this service was part of
    daily: tuple[tuple[str, float | None], ...] = ()  # per day, when asked for (the HTML)


@dataclass(frozen=True, slots=True)
class PlatformReport:
    name: str
    zone: str  # the IANA name the period's calendar counts in
    figures: Figures
    stats: IncidentStats
    services: tuple[ServiceReport, ...]
    daily: tuple[tuple[str, float | None], ...] = ()  # the platform's availability per day
    start: float = 0.0  # the period in the platform's own zone
    end: float = 0.0


@dataclass(frozen=True, slots=True)
class Report:
    label: str  # 2026-11, 2026-Q4, 2026, 2026-11-03..2026-11-10
    start: float
    end: float
    generated_at: float
    platforms: tuple[PlatformReport, ...]


def percent(value: float | None, digits: int = 3) -> str:
    """99.950 %, never rounded up to 100 % while anything was lost; "-" with nothing seen."""
    if value is None:
        return "-"
    shown = f"{value * 100:.{digits}f}"
    if value < 1 and shown == f"{100:.{digits}f}":
        shown = f"{100 - 10 ** -digits:.{digits}f}"
    return f"{shown} %"


def minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60, 2)


def _figures_json(f: Figures) -> dict[str, Any]:
    return {"availability": f.availability, "unplanned_min": minutes(f.unplanned_s),
            "planned_min": minutes(f.planned_s), "maintenance_min": minutes(f.maintenance_s),
            "blind_min": minutes(f.blind_s), "observed_min": minutes(f.observed_s),
            "period_min": minutes(f.period_s)}


def _stats_json(s: IncidentStats) -> dict[str, Any]:
    return {"incidents": s.count,
            "by_severity": {str(level): s.by_severity.get(level, 0) for level in (1, 2, 3)},
            "longest_min": minutes(s.longest_s), "mttr_min": minutes(s.mttr_s)}


def _incident_json(span: IncidentSpan) -> dict[str, Any]:
    return {"id": span.id, "severity": span.severity, "start": iso_utc(span.start),
            "end": iso_utc(span.end),
            "duration_min": None if span.end is None else minutes(span.end - span.start),
            "services": list(span.services), "ticket": span.ticket, "origin": span.origin}


def report_json(report: Report) -> dict[str, Any]:
    return {
        "period": report.label, "start": iso_utc(report.start), "end": iso_utc(report.end),
        "generated_at": iso_utc(report.generated_at),
        "platforms": [{
            "platform": p.name, "timezone": p.zone, "start": iso_utc(p.start),
            "end": iso_utc(p.end), **_figures_json(p.figures),
            **_stats_json(p.stats),
            "daily": [{"day": day, "availability": value} for day, value in p.daily],
            "services": [{"service": s.name, **_figures_json(s.figures), **_stats_json(s.stats)}
                         for s in p.services],
            "incident_list": [_incident_json(i) for i in p.stats.incidents],
        } for p in report.platforms],
    }


def _row(label: str, platform: str, service: str, f: Figures, s: IncidentStats) -> list[str]:
    def num(value: float | None) -> str:
        return "" if value is None else f"{value:g}"

    return [label, platform, service,
            "" if f.availability is None else f"{f.availability:.6f}",
            num(minutes(f.unplanned_s)), num(minutes(f.planned_s)),
            num(minutes(f.maintenance_s)), num(minutes(f.blind_s)),
            num(minutes(f.observed_s)), str(s.count),
            *(str(s.by_severity.get(level, 0)) for level in (1, 2, 3)),
            num(minutes(s.longest_s)), num(minutes(s.mttr_s))]


def report_csv(report: Report) -> str:
    """One row per platform (service empty) and per service; minutes, availability 0..1."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in report.platforms:
        writer.writerow(_row(report.label, p.name, "", p.figures, p.stats))
        for s in p.services:
            writer.writerow(_row(report.label, p.name, s.name, s.figures, s.stats))
    return out.getvalue()


def report_text(report: Report) -> str:
    span = f"{iso_utc(report.start)} to {iso_utc(report.end)}"
    head = f"Availability report {report.label} ({span}, generated {iso_utc(report.generated_at)})"
    lines = [head]
    for p in report.platforms:
        lines += ["", f"Platform {p.name} ({p.zone}): {percent(p.figures.availability)}",
                  *_summary(p.figures, p.stats), ""]
        lines.append(_table(
            [[s.name, percent(s.figures.availability), minutes_text(s.figures.unplanned_s),
              minutes_text(s.figures.planned_s), minutes_text(s.figures.maintenance_s),
              minutes_text(s.figures.blind_s), str(s.stats.count)] for s in p.services],
            ["SERVICE", "AVAILABILITY", "OUTAGE", "PLANNED", "MAINTENANCE", "BLIND",
             "INCIDENTS"]))
        if p.stats.incidents:
            lines += ["", _table([[i.id, str(i.severity), iso_utc(i.start) or "-",
                                   iso_utc(i.end) or "open",
                                   minutes_text(None if i.end is None else i.end - i.start),
                                   i.ticket or "-", ", ".join(i.services)]
                                  for i in p.stats.incidents],
                                 ["INCIDENT", "SEV", "START", "END", "DURATION", "TICKET",
                                  "SERVICES"])]
    return "\n".join(lines) + "\n"


def _summary(f: Figures, s: IncidentStats) -> list[str]:
    by = ", ".join(f"Sev {level}: {s.by_severity.get(level, 0)}" for level in (1, 2, 3))
    return [(f"  outage (unplanned) {minutes_text(f.unplanned_s)}, "
             f"planned outage {minutes_text(f.planned_s)}, "
             f"maintenance {minutes_text(f.maintenance_s)}, blind {minutes_text(f.blind_s)}"),
            (f"  incidents {s.count} ({by}); longest {minutes_text(s.longest_s)}, "
            f"mean time to restore {minutes_text(s.mttr_s)}")]


def minutes_text(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


MONTHLY_DAYS = 7  # days from the first business day in which a late report still goes out


def monthly_due(now: float, calendar: Calendar) -> str | None:
    """The month (``2026-11``) whose report is due at ``now``: the previous one, from the
    first business day of this month on, in the platform's calendar, for ``MONTHLY_DAYS``
    (a daemon down that day still sends it; weeks later it does not, so a mail pruned by
    ``state.keep_mails`` is never sent twice); otherwise None."""
    today = calendar.local_date(now)
    first = day = today.replace(day=1)
    while not calendar.is_business_day(day):
        day += timedelta(days=1)
    if not day <= today < day + timedelta(days=MONTHLY_DAYS):
        return None
    return f"{first - timedelta(days=1):%Y-%m}"


def report_thread(platform: str, label: str) -> Thread:
    return Thread(ThreadKind.REPORT, f"{platform}-{label}")


def report_message(report: Report, recipients: Sequence[str]) -> Message:
    """A platform's report as one mail to its info list (one report, one platform)."""
    (block,) = report.platforms
    return Message(
        thread=report_thread(block.name, report.label), number=0, kind="report",
        to=tuple(recipients),
        subject=f"Availability report {block.name} {report.label}: "
                f"{percent(block.figures.availability)}",
        body=report_text(report), platform=block.name, audience="info")
