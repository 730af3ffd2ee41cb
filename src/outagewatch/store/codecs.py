"""How core state is stored: explicit, versioned JSON, independent of field names in code.

Each record carries ``"v"``; a reader accepts its own version and every earlier one (release
0.1 wrote dataclass dumps without ``"v"``), and refuses a newer one rather than guess.
Renaming a field in the core changes the code here, never a state file in the field.
"""

from __future__ import annotations

from typing import Any

from outagewatch.core.evaluator import Run, Status, Verdict
from outagewatch.core.incidents import Book, Incident, Origin
from outagewatch.core.maintenance import Window, WindowKind, WindowState
from outagewatch.store import StoreError

Json = dict[str, Any]

VERDICT = 2
INCIDENT = 3
BOOK = 2
WINDOW = 1


def _version(data: Json, current: int, what: str) -> int:
    version = int(data.get("v", 0))
    if version > current:
        raise StoreError(f"a stored {what} of format {version} is newer than this outagewatch "
                         f"understands ({current}): refusing to guess")
    return version


# -- verdicts -----------------------------------------------------------------------------


def verdict_to_json(verdict: Verdict) -> Json:
    return {"v": VERDICT,
            "runs": [[r.start, r.status.value, r.after_gap] for r in verdict.runs],
            "last_start": verdict.last_start, "horizon": verdict.horizon,
            "outage_start": verdict.outage_start, "floor": verdict.floor}


def verdict_from_json(data: Json) -> Verdict:
    if _version(data, VERDICT, "verdict") < VERDICT:
        return _verdict_v1(data)
    return Verdict(runs=tuple(Run(float(start), Status(status), bool(gap))
                              for start, status, gap in data["runs"]),
                   last_start=data["last_start"], horizon=data["horizon"],
                   outage_start=data["outage_start"], floor=data["floor"])


def _verdict_v1(data: Json) -> Verdict:
    """Release 0.1 kept a streak start, the latest start and a count of GOOD runs."""
    last, streak = data.get("last_start"), data.get("streak_start")
    if data.get("health") == "outage":
        first = data.get("good_run_start")
        goods = [first] if first is not None and data.get("good_run", 0) >= 1 else []
        if data.get("good_run", 0) >= 2 and last is not None and last != first:
            goods.append(last)
        runs = tuple(Run(start, Status.GOOD) for start in goods)
        return Verdict(runs=runs, last_start=last, outage_start=data["outage_start"])
    if data.get("health") == "bad" and streak is not None and last is not None:
        if streak > last:  # held by maintenance: 0.1 moved the streak to the window's end
            return Verdict(runs=(Run(last, Status.BAD),), last_start=last, floor=streak)
        starts = dict.fromkeys((streak, last))
        return Verdict(runs=tuple(Run(start, Status.BAD) for start in starts), last_start=last)
    return Verdict(last_start=last)


# -- incidents and books --------------------------------------------------------------------


def incident_to_json(incident: Incident) -> Json:
    return {
        "v": INCIDENT, "id": incident.id, "platform": incident.platform,
        "started_at": incident.started_at, "opened_at": incident.opened_at,
        "outage_starts": dict(incident.outage_starts), "affected": sorted(incident.affected),
        "severity": incident.severity, "update_interval": incident.update_interval,
        "last_mail_at": incident.last_mail_at, "mails": incident.mails,
        "restored": dict(incident.restored), "etr": incident.etr,
        "resolved_at": incident.resolved_at, "restored_at": incident.restored_at,
        "notes": [[at, text] for at, text in incident.notes],
        "pending": list(incident.pending), "pending_since": incident.pending_since,
        "origin": incident.origin.value, "reported": list(incident.reported),
        "impact": incident.impact, "ticket": incident.ticket,
        "severity_set": incident.severity_set, "severity_reason": incident.severity_reason,
        "until_restored": incident.until_restored,
        "unmonitored": dict(incident.unmonitored),
    }


def incident_from_json(data: Json) -> Incident:
    # 0.1 wrote the same keys without "v", 1 no pending, 2 nothing opened by hand
    _version(data, INCIDENT, "incident")
    return Incident(
        id=data["id"], platform=data["platform"], started_at=data["started_at"],
        opened_at=data["opened_at"], outage_starts=dict(data["outage_starts"]),
        affected=frozenset(data["affected"]), severity=int(data["severity"]),
        update_interval=float(data["update_interval"]), last_mail_at=data["last_mail_at"],
        mails=int(data["mails"]), restored=dict(data.get("restored", {})),
        etr=data.get("etr"), resolved_at=data.get("resolved_at"),
        restored_at=data.get("restored_at"),
        notes=tuple((at, text) for at, text in data.get("notes", ())),
        pending=tuple(data.get("pending", ())), pending_since=data.get("pending_since"),
        origin=Origin(data.get("origin", Origin.PROBES.value)),
        reported=tuple(data.get("reported", ())), impact=data.get("impact", ""),
        ticket=data.get("ticket"), severity_set=data.get("severity_set"),
        severity_reason=data.get("severity_reason"),
        until_restored=bool(data.get("until_restored", False)),
        unmonitored=dict(data.get("unmonitored", {})),
    )


def book_to_json(book: Book) -> Json:
    return {"v": BOOK, "open": None if book.open is None else incident_to_json(book.open),
            "last_id": book.last_id}


def book_from_json(data: Json) -> Book:
    """Format 2 keeps the last id given; 1 and 0.1 kept counters per year (ids came from
    them; they now come from the declaration time), so the open incident's id serves."""
    version = _version(data, BOOK, "incident book")
    incident = None if data["open"] is None else incident_from_json(data["open"])
    last = data["last_id"] if version >= BOOK else (incident.id if incident else None)
    return Book(open=incident, last_id=last)


# -- maintenance windows ------------------------------------------------------------------


def window_to_json(window: Window) -> Json:
    return {
        "v": WINDOW, "id": window.id, "platform": window.platform,
        "targets": list(window.targets), "start": window.start, "end": window.end,
        "kind": window.kind.value, "description": window.description, "impact": window.impact,
        "registered_at": window.registered_at, "state": window.state.value,
        "mails": window.mails, "last_mail_at": window.last_mail_at,
        "problems": list(window.problems), "history": list(window.history),
        "closed_at": window.closed_at,
    }


def window_from_json(data: Json) -> Window:
    _version(data, WINDOW, "maintenance window")
    return Window(
        id=data["id"], platform=data["platform"], targets=tuple(data["targets"]),
        start=data["start"], end=data["end"], kind=WindowKind(data["kind"]),
        description=data["description"], impact=data["impact"],
        registered_at=data["registered_at"], state=WindowState(data["state"]),
        mails=int(data["mails"]), last_mail_at=data.get("last_mail_at"),
        problems=tuple(data.get("problems", ())), history=tuple(data.get("history", ())),
        closed_at=data.get("closed_at"),
    )
