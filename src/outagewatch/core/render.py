"""Notifications to messages for people: subject and plain text, per thread. Pure.

Templates are ``string.Template`` texts, one subject and one body per kind (open, update,
resolved), replaceable by an operator; ``DEFAULT_TEMPLATES`` are the English ones. Every
message of an incident or a maintenance window belongs to that one thread and carries its
number in it (0 opens it), so a channel can thread them (the SMTP channel derives
Message-ID, In-Reply-To and References from thread and number). The subject begins with a
stable stem, ``Incident <id>``, so that clients grouping by subject keep the thread too.
"""

from __future__ import annotations

import enum
import string
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

from outagewatch.core.incidents import Kind, Origin

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from outagewatch.core.incidents import Incident, Notification, Platform
    from outagewatch.core.maintenance import MaintenanceMail

SEVERITY_TEXT = {
    1: "Severity 1: complete outage, all users affected",
    2: "Severity 2: a business-critical component is unusable for most users",
    3: "Severity 3: partial loss of non-critical functionality",
}

DEFAULT_TEMPLATES: Mapping[str, str] = {
    "subject": "Incident $id [$state] Sev $severity $platform: $services$ticket_suffix",
    "open": """\
$detected on platform $platform.

Affected services:
$impacts

Since:          $since
Duration so far: $duration
$severity_text
Expected time to restoration: $etr
$ticket_line
Recent observations:
$observations

We will send an update every $update_every while the outage lasts.
Incident $id
""",
    "update": """\
Update on the outage on platform $platform ($reasons).

Affected services now:
$impacts
$recovered
Since:          $since
Duration so far: $duration
$severity_text
Expected time to restoration: $etr
$notes
Recent observations:
$observations

Next update in $update_every at the latest.
Incident $id
$ticket_line""",
    "resolved": """\
The outage on platform $platform is over: $over.

Services that were affected:
$impacts
$recovered
Outage began:   $since
Restored:       $restored
Total duration: $duration
$severity_text
$notes
Incident $id is closed.
$ticket_line""",
}


# What an incident template may use ($name); the ones that span lines stay out of subjects.
TEMPLATE_FIELDS = frozenset({
    "id", "state", "severity", "severity_text", "platform", "services", "impacts",
    "recovered", "since", "duration", "restored", "etr", "update_every", "reasons",
    "observations", "notes", "ticket", "ticket_line", "ticket_suffix", "detected", "over"})
MULTILINE_FIELDS = frozenset({"impacts", "recovered", "observations", "notes", "ticket_line"})


@dataclass(frozen=True, slots=True)
class Observed:
    """One recent probe result of a service, for the mail."""

    service: str
    start: float
    duration: float
    result: str  # ok or the error class
    phase: str | None = None
    location: str = ""  # in a cluster: the vantage point it was seen from
    threshold: float | None = None  # an answer slower than this is BAD: "slow", not "ok"


class ThreadKind(enum.StrEnum):
    INCIDENT = "incident"
    MAINTENANCE = "maintenance"
    REPORT = "report"  # a platform's monthly availability report, one mail per month


@dataclass(frozen=True, slots=True)
class Thread:
    """What a message is about: an incident or a maintenance window, by its id. The kind
    is part of the identity: a window may be named like an incident."""

    kind: ThreadKind
    id: str

    @property
    def key(self) -> str:
        return f"{self.kind.value}:{self.id}"

    @classmethod
    def parse(cls, key: str) -> Thread:
        kind, _, ident = key.partition(":")
        return cls(ThreadKind(kind), ident)


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a thread, rendered for people, before any channel."""

    thread: Thread
    number: int  # 0 opens the thread, then 1, 2, ...
    kind: str  # open, update, resolved; announcement, updated, started, ...
    to: tuple[str, ...]
    subject: str
    body: str
    platform: str = ""  # whose list it goes to...
    audience: str = ""  # ...and which: "incident" or "info" (a channel may name it, List-Id)


def when(ts: float, zone: tzinfo = UTC) -> str:
    """ISO 8601 UTC plus a readable form, in the platform's own time first when it has one:
    2026-12-16T03:00:00Z (Tue 15 Dec 2026 22:00 EST, Wed 16 Dec 2026 03:00 UTC)."""
    iso = f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%dT%H:%M:%SZ}"
    if _is_utc(zone):
        return f"{iso} ({_local(ts, UTC, '%a %d %b %Y %H:%M')} UTC)"
    return (f"{iso} ({_local(ts, zone, '%a %d %b %Y %H:%M %Z')}, "
            f"{_local(ts, UTC, '%a %d %b %Y %H:%M')} UTC)")


def clock_time(ts: float, zone: tzinfo = UTC) -> str:
    """A time of day for a line in a mail: 09:14Z, or 04:14 EST (09:14Z)."""
    return _beside_utc(ts, zone, "%H:%M")


def _beside_utc(ts: float, zone: tzinfo, fmt: str) -> str:
    """``fmt`` in UTC (09:14Z), or in the platform's time with UTC beside it."""
    utc = f"{_local(ts, UTC, fmt)}Z"
    return utc if _is_utc(zone) else f"{_local(ts, zone, fmt + ' %Z')} ({utc})"


def _local(ts: float, zone: tzinfo, fmt: str) -> str:
    return datetime.fromtimestamp(ts, UTC).astimezone(zone).strftime(fmt)


def _is_utc(zone: tzinfo) -> bool:
    return str(zone) in {"UTC", "Etc/UTC"}


def span(seconds: float) -> str:
    """2 d 3 h 4 min; 45 s under a minute."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "",
             f"{minutes} min" if minutes else ""]
    return " ".join(p for p in parts if p)


def render(
    notice: Notification,
    platform: Platform,
    *,
    recipients: Sequence[str],
    observations: Sequence[Observed] = (),
    templates: Mapping[str, str] = DEFAULT_TEMPLATES,
    seen: Mapping[str, str] | None = None,
) -> Message:
    """``seen``: in a cluster, per service, who saw it ("seen from fra and ams; nyc answered
    normally"), told on its impact line."""
    incident = notice.incident
    tz = platform.zone
    services = incident.services if notice.kind is not Kind.RESOLVED else incident.involved
    impacts = _lines([_impact_line(incident, platform, name, seen or {})
                      for name in services], "- and {} more services") or "- none"
    back = [n for n in sorted(incident.restored) if n not in incident.affected]
    gone = sorted(incident.unmonitored)
    recovered = "".join(f"{line}\n" for line in _capped(
        [f"Restored: {n} at {when(incident.restored[n], tz)}" for n in back]
        + [f"No longer monitored: {n} (removed from the configuration at "
           f"{when(incident.unmonitored[n], tz)}; its restoration was not observed)"
           for n in gone],
        "Restored: {} more services"))
    end = incident.restored_at if incident.restored_at is not None else notice.at
    by_hand = incident.origin is Origin.OPERATOR
    ticket = incident.ticket or ""
    values = {
        "id": incident.id,
        "state": notice.kind.value.upper(),
        "severity": str(incident.severity),
        "severity_text": SEVERITY_TEXT[incident.severity] + (
            f" (set by the operators: {incident.severity_reason})"
            if incident.severity_reason and incident.severity == incident.severity_set else ""),
        "platform": platform.name,
        "services": names(services) or "-",
        "impacts": impacts,
        "recovered": recovered,
        "since": when(incident.started_at, tz),
        "duration": span(end - incident.started_at),
        "restored": (when(incident.restored_at, tz) if incident.restored_at is not None
                     else "not observed"),
        "etr": when(incident.etr, tz) if incident.etr is not None else "unknown",
        "update_every": span(incident.update_interval),
        "reasons": "; ".join(summarise(notice.reasons)),
        "observations": _lines(_observations(observations, tz), "- and {} more results")
        or "- none recorded",
        "notes": "".join(f"\nNote ({clock_time(at, tz)}): {text}\n"
                         for at, text in incident.notes),
        "ticket": ticket,
        "ticket_line": f"Ticket: {ticket}\n" if ticket else "",
        "ticket_suffix": f" (ticket {ticket})" if ticket else "",
        "detected": ("An outage has been reported to us" if by_hand
                     else "We have detected an outage"),
        "over": _over(notice),
    }
    return Message(
        thread=Thread(ThreadKind.INCIDENT, incident.id), number=notice.number,
        kind=notice.kind.value, to=tuple(recipients),
        subject=string.Template(templates["subject"]).safe_substitute(values),
        body=string.Template(templates[notice.kind.value]).safe_substitute(values),
        platform=incident.platform, audience="incident",
    )


MAINTENANCE_TEMPLATES: Mapping[str, str] = {
    "subject": "Maintenance $id [$state] $kind $platform: $services, $period",
    "announcement": """\
We will carry out $kind maintenance on platform $platform.

Planned time: $start to $end ($length)
Affected services: $services
$impact_line$description_block
We will send a mail when it starts and when it is finished.
Maintenance $id
""",
    "updated": """\
The $kind maintenance on platform $platform has been rescheduled ($history).

New time: $start to $end ($length)
Affected services: $services
$impact_line
Maintenance $id
""",
    "started": """\
The $kind maintenance on platform $platform has started.

Planned end: $end
Affected services: $services
$impact_line
Maintenance $id
""",
    "finished": """\
The $kind maintenance on platform $platform is finished: $outcome.

Window: $start to $end
Affected services: $services

Maintenance $id
""",
    "cancelled": """\
The $kind maintenance on platform $platform planned for $start to $end is cancelled.
It will not take place; nothing changes for the users.

Maintenance $id
""",
}


def render_maintenance(
    mail: MaintenanceMail,
    *,
    recipients: Sequence[str],
    templates: Mapping[str, str] = MAINTENANCE_TEMPLATES,
    zone: tzinfo = UTC,
) -> Message:
    window = mail.window
    tz = zone
    problems = window.problems
    outcome = ("successful, every affected service answers normally" if not problems else
               "completed with problems: not answering normally at its end: "
               + ", ".join(problems))
    values = {
        "id": window.id,
        "state": mail.kind.value.upper(),
        "kind": window.kind.value,
        "platform": window.platform,
        "services": names(window.targets) or "-",
        "period": _period(window.start, tz),
        "start": when(window.start, tz),
        "end": when(window.end, tz),
        "length": span(window.end - window.start),
        "impact": window.impact or "-",
        "impact_line": (f"Expected impact: {window.impact.strip()}\n"
                        if window.impact.strip() else ""),
        "description": window.description.strip(),
        "description_block": (f"\n{window.description.strip()}\n"
                              if window.description.strip() else ""),
        "history": "; ".join(window.history[-1:]),
        "outcome": outcome,
    }
    return Message(
        thread=Thread(ThreadKind.MAINTENANCE, window.id), number=mail.number,
        kind=mail.kind.value, to=tuple(recipients),
        subject=string.Template(templates["subject"]).safe_substitute(values),
        body=string.Template(templates[mail.kind.value]).safe_substitute(values),
        platform=window.platform, audience="info",
    )


def _observations(observed: Sequence[Observed], zone: tzinfo = UTC) -> list[str]:
    lines = []
    for o in observed:
        origin = f" from {o.location}" if o.location else ""
        lines.append(f"- {_stamp(o.start, zone)} {o.service}{origin}: {outcome(o)}")
    return lines


def outcome(o: Observed) -> str:
    """What one run said: "ok after 0.2 s", "slow: 5.0 s (threshold 3 s)", "timeout in
    login after 30.0 s". An answer slower than the threshold is not ok."""
    if o.result == "ok":
        if o.threshold is not None and o.duration > o.threshold:
            return f"slow: {o.duration:.1f} s (threshold {o.threshold:g} s)"
        return f"ok after {o.duration:.1f} s"
    where = f" in {o.phase}" if o.phase else ""
    return f"{o.result}{where} after {o.duration:.1f} s"


def _period(ts: float, zone: tzinfo) -> str:
    return _beside_utc(ts, zone, "%Y-%m-%d %H:%M")


def _stamp(ts: float, zone: tzinfo) -> str:
    return _beside_utc(ts, zone, "%H:%M:%S")


def _over(notice: Notification) -> str:
    incident = notice.incident
    if notice.reasons[-1:] == ("resolved by the operators",):
        return "resolved by the operators"
    if incident.unmonitored and not incident.restored:
        return ("nothing affected is monitored any more (removed from the configuration); "
                "its restoration was not observed")
    if incident.unmonitored:
        return "every service still monitored is restored"
    return "all services are restored"


def _impact_line(incident: Incident, platform: Platform, name: str,
                 seen: Mapping[str, str]) -> str:
    """One affected service or component: what users notice, since when, who saw it."""
    tz = platform.zone
    if name in incident.reported:
        told = incident.impact or _impact(platform, name) or "reported unavailable or too slow"
        probes = ""
        if name in incident.affected:
            down = clock_time(incident.outage_starts[name], tz)
            probes = f"; the probes see it down since {down}"
        elif name in incident.restored:
            probes = f"; the probes saw it recover at {clock_time(incident.restored[name], tz)}"
        return f"- {name}: {told} (reported since {clock_time(incident.started_at, tz)}{probes})"
    if name in incident.unmonitored and name not in incident.outage_starts:
        return f"- {name}: no longer monitored"
    told = _impact(platform, name) or "service unavailable or too slow"
    origin = f"; {seen[name]}" if seen.get(name) else ""
    return f"- {name}: {told} (since {when(incident.outage_starts[name], tz)}{origin})"


def _impact(platform: Platform, name: str) -> str:
    try:
        return platform.service(name).impact
    except KeyError:  # a service no longer configured
        return ""


NAMES_IN_SUBJECT = 3
LINES_IN_BODY = 20


def names(services: Sequence[str], limit: int = NAMES_IN_SUBJECT) -> str:
    """imap-eu, pop3-eu, smtp-eu and 997 more: a subject stays a subject."""
    shown = ", ".join(services[:limit])
    return shown if len(services) <= limit else f"{shown} and {len(services) - limit} more"


def summarise(reasons: Sequence[str], limit: int = NAMES_IN_SUBJECT) -> list[str]:
    """Many services joining or recovering at once read as one reason each way:
    "998 services down: imap-eu, pop3-eu, smtp-eu and 995 more"."""
    grouped: dict[str, list[str]] = {}
    out: list[str] = []
    for reason in reasons:
        service, _, what = reason.rpartition(" ")
        if what in {"down", "restored"} and service and " " not in service:
            if what not in grouped:
                out.append(what)  # a placeholder, where the group's first member was
            grouped.setdefault(what, []).append(service)
        else:
            out.append(reason)
    result = []
    for item in out:
        members = grouped.get(item)
        if members is None:
            result.append(item)
        elif len(members) <= limit:
            result += [f"{member} {item}" for member in members]
        else:
            result.append(f"{len(members)} services {item}: {names(members, limit)}")
    return result


def _capped(lines: list[str], more: str, limit: int = LINES_IN_BODY) -> list[str]:
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], more.format(len(lines) - limit)]


def _lines(lines: list[str], more: str, limit: int = LINES_IN_BODY) -> str:
    return "\n".join(_capped(lines, more, limit))
