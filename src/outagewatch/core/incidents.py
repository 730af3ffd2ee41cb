"""Incidents per platform (DESIGN 4.5-4.6), as pure functions of a platform's book.

One incident per platform at a time: the first service in OUTAGE opens it, others join it
while it is open, and it resolves when its last service recovers. Every change returns the
notifications it causes: OPEN at declaration; UPDATE at once when the affected set, the
severity, the expected time to restoration (ETR) or the update interval changes, and every
``update_interval`` after the previous mail while it stays open; RESOLVED at recovery.
Times are Unix seconds; ``now`` is always passed in.

An operator may open an incident by hand (an outage a customer reported through the ticket
process, or a threat no probe sees): the same mails and cadence apply. Its services and
components are *reported*: they stay affected until the operator resolves it. Probe-declared
outages on the platform join it; their recovery resolves it only when the operator opened it
for probed services and said so (``until_restored``). A severity set by hand is a floor no
probe-derived change lowers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

from outagewatch.model import DEFAULT_UPDATE_INTERVAL

if TYPE_CHECKING:
    from collections.abc import Mapping


class Kind(enum.StrEnum):
    OPEN = "open"
    UPDATE = "update"
    RESOLVED = "resolved"


class Refused(ValueError):
    """An operator's request this incident cannot take; the message says why."""


class Origin(enum.StrEnum):
    PROBES = "probes"  # declared by the probes' verdict
    OPERATOR = "operator"  # opened by hand (a customer's report, a security threat)


@dataclass(frozen=True, slots=True)
class Service:
    """What incidents need to know of a monitored service."""

    name: str
    critical: bool = True
    impact: str = ""


@dataclass(frozen=True, slots=True)
class Platform:
    name: str
    services: tuple[Service, ...]
    update_interval: float = DEFAULT_UPDATE_INTERVAL
    coalesce: float = 0.0  # changes within this many seconds of the first make one UPDATE
    zone: tzinfo = UTC  # the platform's own time zone, shown beside UTC in its mails

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Incident:
    id: str
    platform: str
    started_at: float  # the earliest outage start of any service involved
    opened_at: float  # when the first service was declared in OUTAGE
    outage_starts: Mapping[str, float]  # every service involved: its latest outage's start
    affected: frozenset[str]  # in OUTAGE now
    severity: int
    update_interval: float
    last_mail_at: float
    mails: int  # mails sent so far (the OPEN one included)
    restored: Mapping[str, float] = field(default_factory=dict)  # recovered: restore time
    etr: float | None = None  # expected time to restoration, once an operator sets it
    resolved_at: float | None = None
    restored_at: float | None = None  # when service was back for the last one
    notes: tuple[tuple[float, str], ...] = ()  # operators' notes: (when, text)
    pending: tuple[str, ...] = ()  # changes not mailed yet (coalescing)
    pending_since: float | None = None
    origin: Origin = Origin.PROBES
    reported: tuple[str, ...] = ()  # services and components named by hand, affected until
    impact: str = ""  # ...the operator resolves it, and the user impact the operator gave
    ticket: str | None = None  # the customer's ticket, quoted in every mail
    severity_set: int | None = None  # a severity set by hand: no probe change lowers it...
    severity_reason: str | None = None  # ...and why, told with the severity in every mail
    until_restored: bool = False  # opened by hand for probed services: resolve with them
    unmonitored: Mapping[str, float] = field(default_factory=dict)  # removed by a reload

    @property
    def duration(self) -> float | None:
        return None if self.restored_at is None else self.restored_at - self.started_at

    @property
    def services(self) -> list[str]:
        """Everything affected now: named by hand, then declared by the probes."""
        return [*self.reported, *sorted(self.affected - set(self.reported))]

    @property
    def involved(self) -> list[str]:
        """Everything that was part of it: named by hand, declared, removed by a reload."""
        probed = set(self.outage_starts) | set(self.unmonitored)
        return [*self.reported, *sorted(probed - set(self.reported))]


@dataclass(frozen=True, slots=True)
class Notification:
    kind: Kind
    incident: Incident  # as it is after the change
    at: float
    number: int  # 0 for OPEN, then 1, 2, ... in the incident's thread
    reasons: tuple[str, ...]  # what changed, for the mail ("imap-eu joined", ...)


@dataclass(frozen=True, slots=True)
class Book:
    """A platform's incident state: the open incident and the last id given."""

    open: Incident | None = None
    last_id: str | None = None


Step = tuple[Book, list[Notification]]


def incident_id(platform: str, now: float, *, after: str | None = None) -> str:
    """A readable id that no lost state can hand out again: the platform and the minute of
    the declaration in UTC (EU-20261129-1423), with -2, -3, ... for a second incident of
    the platform declared in the same minute (``after`` is the last id given)."""
    stem = f"{platform.upper()}-{datetime.fromtimestamp(now, UTC):%Y%m%d-%H%M}"
    if after is None or not after.startswith(stem):
        return stem
    suffix = after[len(stem) + 1:]
    return f"{stem}-{int(suffix) + 1 if suffix.isdigit() else 2}"


def severity(platform: Platform, affected: frozenset[str]) -> int:
    """1: every service down; 2: a critical one down; 3: non-critical ones only."""
    if affected and affected >= {s.name for s in platform.services}:
        return 1
    if any(_critical(platform, name) for name in affected):
        return 2
    return 3


def _critical(platform: Platform, name: str) -> bool:
    try:
        return platform.service(name).critical
    except KeyError:  # no longer configured: as it was declared, a service of the platform
        return True


def _level(platform: Platform, incident: Incident) -> int:
    """The probes' severity, never lower (a higher number) than one set by hand."""
    if incident.severity_set is None:
        return severity(platform, incident.affected)
    if not incident.affected:
        return incident.severity_set
    return min(severity(platform, incident.affected), incident.severity_set)


def declared(book: Book, platform: Platform, service: str, outage_start: float,
             now: float) -> Step:
    """``service`` entered OUTAGE: open an incident, or join the open one."""
    incident = book.open
    if incident is None:
        affected = frozenset({service})
        incident = Incident(
            id=incident_id(platform.name, now, after=book.last_id),
            platform=platform.name,
            started_at=outage_start,
            opened_at=now,
            outage_starts={service: outage_start},
            affected=affected,
            severity=severity(platform, affected),
            update_interval=platform.update_interval,
            last_mail_at=now,
            mails=1,
        )
        book = Book(open=incident, last_id=incident.id)
        return book, [Notification(Kind.OPEN, incident, now, 0, (f"{service} down",))]
    if service in incident.affected:
        return book, []
    affected = incident.affected | {service}
    restored = {k: v for k, v in incident.restored.items() if k != service}
    changed = replace(
        incident, affected=affected, restored=restored,
        unmonitored={k: v for k, v in incident.unmonitored.items() if k != service},
        outage_starts={**incident.outage_starts, service: outage_start},
        started_at=min(incident.started_at, outage_start),
    )
    return _update(book, platform, changed, now, f"{service} down")


def restored(book: Book, platform: Platform, service: str, restored_at: float,
             now: float) -> Step:
    """``service`` recovered: update the incident, or resolve it if it was the last one."""
    incident = book.open
    if incident is None or service not in incident.affected:
        return book, []
    affected = incident.affected - {service}
    changed = replace(incident, affected=affected,
                      restored={**incident.restored, service: restored_at})
    if affected or not _resolves_with_probes(changed):
        return _update(book, platform, changed, now, f"{service} restored")
    # Service came back when the last of them came back, whichever recovery was recognised
    # last (a service probed every 5 min is recognised later than one probed every minute).
    return _resolve(book, changed, now, max(changed.restored.values()),
                    f"{service} restored")


def unmonitored(book: Book, platform: Platform, service: str, now: float) -> Step:
    """``service`` left the configuration while in OUTAGE: nobody watches it any more, so
    it is said to be no longer monitored, never restored. The incident resolves if nothing
    else keeps it open (its restoration was not observed: no restore time)."""
    incident = book.open
    if incident is None or service not in incident.affected:
        return book, []
    changed = replace(incident, affected=incident.affected - {service},
                      unmonitored={**incident.unmonitored, service: now})
    reason = f"{service} no longer monitored"
    if changed.affected or not _resolves_with_probes(changed):
        return _update(book, platform, changed, now, reason)
    back = max(changed.restored.values()) if changed.restored else None
    return _resolve(book, changed, now, back, reason)


def opened(book: Book, platform: Platform, now: float, *, reported: tuple[str, ...],
           severity: int, impact: str, since: float | None = None,
           ticket: str | None = None, etr: float | None = None,
           until_restored: bool = False) -> Step:
    """An operator opens an incident by hand: a customer's report, a threat no probe sees.
    ``reported``: the services and components it names (affected until resolved by hand).
    One incident per platform: when one is open, the operator adds to it instead."""
    if book.open is not None:
        raise Refused(f"platform {platform.name} already has an open incident "
                      f"{book.open.id}: attach the ticket and what was reported to it "
                      "('incident attach'), add a note or set its severity")
    if not reported:
        raise Refused("name at least one service or component")
    if severity not in SEVERITIES:
        raise Refused(f"severity must be 1, 2 or 3, not {severity}")
    if until_restored and any(name not in _names(platform) for name in reported):
        raise Refused("only an incident opened for probed services can resolve with them")
    start = now if since is None else min(since, now)
    incident = Incident(
        id=incident_id(platform.name, now, after=book.last_id), platform=platform.name,
        started_at=start, opened_at=now, outage_starts={}, affected=frozenset(),
        severity=severity, update_interval=platform.update_interval, last_mail_at=now,
        mails=1, etr=etr, origin=Origin.OPERATOR, reported=tuple(dict.fromkeys(reported)),
        impact=impact.strip(), ticket=ticket or None, severity_set=severity,
        until_restored=until_restored)
    book = Book(open=incident, last_id=incident.id)
    reason = "reported by the operators" + (f" (ticket {ticket})" if ticket else "")
    return book, [Notification(Kind.OPEN, incident, now, 0, (reason,))]


def resolve(book: Book, incident_id: str, now: float, *, note: str | None = None) -> Step:
    """An operator resolves the open incident by hand. Refused while the probes still see a
    service of it in OUTAGE: it resolves when they recover, or it would go silent."""
    incident = _the_open(book, incident_id)
    if incident.affected:
        raise Refused(f"the probes still see {', '.join(sorted(incident.affected))} down: "
                      f"incident {incident.id} resolves when they recover")
    if note is not None and note.strip():
        incident = replace(incident, notes=(*incident.notes, (now, note.strip())))
    return _resolve(book, incident, now, now, "resolved by the operators")


def set_severity(book: Book, incident_id: str, level: int, reason: str,
                 now: float) -> Step:
    """An operator sets the severity (e.g. 1 for a security threat no probe sees): an UPDATE
    naming the reason at once; later probe-derived changes never lower it."""
    incident = _the_open(book, incident_id)
    if level not in SEVERITIES:
        raise Refused(f"severity must be 1, 2 or 3, not {level}")
    if not reason.strip():
        raise Refused("give the reason for the severity")
    reason = reason.strip()
    change = (f"severity {level} kept" if level == incident.severity
              else f"severity {incident.severity} -> {level} set")
    why = f"{change} by the operators: {reason}"
    return _mail(book, replace(incident, severity=level, severity_set=level,
                               severity_reason=reason), now, (why,))


SEVERITIES = (1, 2, 3)
PERIODIC = "periodic update"


def _names(platform: Platform) -> set[str]:
    return {s.name for s in platform.services}


def _the_open(book: Book, incident_id: str) -> Incident:
    incident = book.open
    if incident is None or incident.id.lower() != incident_id.lower():
        raise Refused(f"incident {incident_id} is not open")
    return incident


def _resolves_with_probes(incident: Incident) -> bool:
    """Probes recovering resolve it: their own incident, or one opened by hand for probed
    services when the operator said so, once the probes saw every one of them recover (a
    service they never saw down cannot be seen to recover: that needs the operator)."""
    if incident.origin is Origin.PROBES:
        return True
    return incident.until_restored and all(name in incident.restored
                                           for name in incident.reported)


def _resolve(book: Book, incident: Incident, now: float, back: float | None,
             reason: str) -> Step:
    final = replace(incident, resolved_at=now, restored_at=back, last_mail_at=now,
                    mails=incident.mails + 1, pending=(), pending_since=None)
    reasons = (*incident.pending, reason)  # what was not mailed yet goes too
    notice = Notification(Kind.RESOLVED, final, now, incident.mails, reasons)
    return replace(book, open=None), [notice]


def tick(book: Book, platform: Platform, now: float) -> Step:
    """The UPDATE of changes collected for ``platform.coalesce`` seconds, or the periodic one
    when ``update_interval`` has passed since the last mail (a single one however late the
    call, never a burst of missed ones). The periodic one is collected too: a recovery
    within ``coalesce`` makes one RESOLVED, not an UPDATE and at once a RESOLVED."""
    incident = book.open
    if incident is None:
        return book, []
    if incident.pending_since is not None:
        if now >= incident.pending_since + platform.coalesce:
            # the periodic cadence stays where it was due, however long it was collected
            due = incident.pending_since if PERIODIC in incident.pending else now
            return _mail(book, incident, now, (), sent_at=due)
        return book, []
    if now >= incident.last_mail_at + incident.update_interval:
        if platform.coalesce > 0:
            return replace(book, open=replace(incident, pending=(PERIODIC,),
                                              pending_since=now)), []
        return _mail(book, incident, now, (PERIODIC,))
    return book, []


def change(book: Book, now: float, *, etr: float | None = None,
           interval: float | None = None, note: str | None = None,
           ticket: str | None = None, reported: tuple[str, ...] = ()) -> Step:
    """An operator's change to the open incident: a new expected time to restoration, a new
    update interval, a note, the customer's ticket, services or components a customer
    reported (affected until resolved by hand). One UPDATE mail names everything that
    changed; nothing changes, no mail."""
    incident = book.open
    if incident is None:
        return book, []
    reasons: list[str] = []
    if ticket is not None and ticket != incident.ticket:
        incident = replace(incident, ticket=ticket)
        reasons.append(f"ticket {ticket}")
    added = tuple(name for name in dict.fromkeys(reported) if name not in incident.reported)
    if added:
        incident = replace(incident, reported=(*incident.reported, *added))
        reasons.append(f"reported by the operators: {', '.join(added)}")
    if etr is not None and etr != incident.etr:
        incident = replace(incident, etr=etr)
        reasons.append("expected time to restoration set")
    if interval is not None and interval != incident.update_interval:
        incident = replace(incident, update_interval=interval)
        reasons.append(f"updates every {interval:g} s from now on")
    if note is not None and note.strip():
        incident = replace(incident, notes=(*incident.notes, (now, note.strip())))
        reasons.append("note from the operators")
    if not reasons:
        return book, []
    return _mail(book, incident, now, tuple(reasons))


def next_deadline(book: Book, platform: Platform) -> float | None:
    """When ``tick`` will send the next UPDATE: the collected changes, or the periodic one."""
    incident = book.open
    if incident is None:
        return None
    if incident.pending_since is None:
        return incident.last_mail_at + incident.update_interval
    return incident.pending_since + platform.coalesce


def _update(book: Book, platform: Platform, incident: Incident, now: float,
            reason: str) -> Step:
    """A change worth a mail: at once, or, with ``platform.coalesce``, in one UPDATE with the
    changes that come within that many seconds (a platform going down at once is one mail,
    not one per service)."""
    reasons = [reason]
    level = _level(platform, incident)
    if level != incident.severity:
        reasons.append(f"severity {incident.severity} -> {level}")
        incident = replace(incident, severity=level)
    if platform.coalesce <= 0:
        return _mail(book, incident, now, tuple(reasons))
    collected = replace(incident, pending=(*incident.pending, *reasons),
                        pending_since=incident.pending_since if incident.pending_since
                        is not None else now)
    return replace(book, open=collected), []


def _mail(book: Book, incident: Incident, now: float, reasons: tuple[str, ...], *,
          sent_at: float | None = None) -> Step:
    """An UPDATE now, with whatever changes were still collected. ``sent_at``: where the
    next periodic UPDATE counts from, if not from now."""
    sent = replace(incident, last_mail_at=now if sent_at is None else sent_at,
                   mails=incident.mails + 1, pending=(), pending_since=None)
    notice = Notification(Kind.UPDATE, sent, now, incident.mails, (*incident.pending, *reasons))
    return replace(book, open=sent), [notice]
