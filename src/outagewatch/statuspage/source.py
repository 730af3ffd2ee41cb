"""What the status page and the feed read: the ``StatusSource`` protocol and its plain values.

The page knows nothing of engines or stores: whoever runs it (``app.py``) hands it a source.
Times are Unix seconds. ``host`` and ``detail`` of a service and the ``note`` entries of an
incident's timeline are internal: the public view never shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import tzinfo

# "unknown": never probed yet (a fresh start): no state can honestly be claimed
ServiceStateName = Literal["operational", "degraded", "outage", "maintenance", "unknown"]
# open: in progress; restored: every service back, not resolved yet; resolved
IncidentStateName = Literal["open", "restored", "resolved"]
# open, update, resolved: the incident's mails; note: an operator's note (internal);
# etr: the expected time to restoration was set
TimelineKind = Literal["open", "update", "resolved", "note", "etr"]


@dataclass(frozen=True, slots=True)
class ServiceState:
    name: str
    platform: str
    type: str  # http, smtp, imap, pop3
    state: ServiceStateName
    threshold_s: float  # slower than this is BAD
    host: str = ""  # internal only
    detail: str = ""  # internal only: the last run's error, if any


@dataclass(frozen=True, slots=True)
class IncidentView:
    id: str
    platform: str
    severity: int
    state: IncidentStateName
    start: float
    end: float | None  # restored or resolved; None while open
    services: tuple[str, ...]
    timeline: tuple[tuple[float, TimelineKind, str], ...]  # (at, kind, text), oldest first
    ticket: str | None = None
    etr: float | None = None  # expected time to restoration, once given
    impact: str = ""  # the user impact an operator gave


@dataclass(frozen=True, slots=True)
class WindowView:
    id: str
    platform: str
    services: tuple[str, ...]
    start: float
    end: float  # as planned, or when it was cancelled/closed
    kind: str  # planned, emergency
    state: str  # scheduled, active, finished, cancelled
    description: str = ""
    impact: str = ""


@dataclass(frozen=True, slots=True)
class FeedEntry:
    id: str  # unique and stable: "<thread>/<number>", e.g. "incident:EU-20261129-1423/2"
    thread: str  # "incident:<id>" or "maintenance:<id>"
    number: int  # 0 opens the thread
    kind: str  # open, update, resolved; announcement, updated, started, ...
    subject: str
    body: str
    created: float
    platform: str = ""


class StatusSource(Protocol):
    def now(self) -> float: ...

    def platforms(self) -> Mapping[str, tzinfo]: ...

    def services(self) -> list[ServiceState]: ...

    async def response_times(self, since: float
                             ) -> dict[str, list[tuple[float, float | None, bool]]]:
        """Per service: (bucket start, p95 seconds or None, any run BAD), oldest first."""
        ...

    async def daily(self, days: int) -> dict[str, list[tuple[str, float | None]]]:
        """Per service: (YYYY-MM-DD in its platform's zone, availability 0..1 or None = no
        data), oldest first, the last ``days`` days up to today."""
        ...

    async def incidents(self, since: float) -> list[IncidentView]:
        """Open incidents, and those resolved since ``since``."""
        ...

    async def windows(self, since: float) -> list[WindowView]:
        """Upcoming and running windows, and those that ended since ``since``."""
        ...

    async def mails(self, since: float, platform: str | None) -> list[FeedEntry]:
        """Incident and maintenance mails created since ``since`` (one per message, not per
        recipient), of ``platform`` only when given."""
        ...
