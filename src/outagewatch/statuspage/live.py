"""The status page's source on one daemon: states from the engine, incidents, windows and
mails from the store (the ledger the mails come from), response times and daily
availability from the history (``history.py``: the rollups and ``core/availability``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from outagewatch.core.evaluator import Health
from outagewatch.core.maintenance import WindowState
from outagewatch.core.render import Thread, ThreadKind
from outagewatch.statuspage.source import (
    FeedEntry,
    IncidentStateName,
    IncidentView,
    ServiceState,
    ServiceStateName,
    TimelineKind,
    WindowView,
)
from outagewatch.statuspage.web import StatusPage

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import tzinfo

    from outagewatch.clock import Clock
    from outagewatch.config import ServerConfig, Target
    from outagewatch.core.incidents import Incident
    from outagewatch.core.maintenance import Window
    from outagewatch.engine import Engine
    from outagewatch.history import History
    from outagewatch.model import Sample
    from outagewatch.store import StateStore, StoredMessage

INCIDENTS_READ = 500  # the latest incidents read for the page and the feed
_ETR_LINE = "Expected time to restoration:"
_TIMELINE_KINDS: dict[str, TimelineKind] = {"open": "open", "update": "update",
                                             "resolved": "resolved"}


class WindowBook(Protocol):
    """The maintenance windows as the page reads them: one daemon's maintenance unit, or a
    cluster leader's."""

    def covered(self, name: str, now: float) -> bool: ...
    def windows(self) -> Sequence[Window]: ...


class Judge(Protocol):
    """A service's state on the page, apart from maintenance."""

    def __call__(self, name: str, now: float, *, probed: bool) -> ServiceStateName: ...


class DaemonStatusSource:
    """A ``StatusSource`` on the engine, the maintenance unit and the state store. A cluster
    leader gives its own ``judge`` (the locations' consensus) and ``last`` (the newest
    sample of any location)."""

    def __init__(self, *, engine: Engine, maintenance: WindowBook, store: StateStore,
                 clock: Clock, targets: Sequence[Target], last: Mapping[str, Sample],
                 history: History, judge: Judge | None = None) -> None:
        self._engine = engine
        self._history = history
        self._maintenance = maintenance
        self._store = store
        self._clock = clock
        self._targets = tuple(targets)
        self._last = last
        self._judge: Judge = judge or self._verdict

    def configure(self, targets: Sequence[Target]) -> None:
        """A (re)loaded configuration's targets."""
        self._targets = tuple(targets)

    def now(self) -> float:
        return self._clock.now().timestamp()

    def platforms(self) -> Mapping[str, tzinfo]:
        return {name: p.zone for name, p in self._engine.topology.platforms.items()}

    def services(self) -> list[ServiceState]:
        now = self.now()
        out = []
        for target in self._targets:
            info = self._engine.topology.targets.get(target.name)
            if info is None:
                continue
            sample = self._last.get(target.name)
            detail = "" if sample is None or sample.result == "ok" else (
                f"{sample.result}"
                + (f" in {sample.phase}" if sample.phase else "")
                + (f": {sample.detail}" if sample.detail else ""))
            out.append(ServiceState(
                name=target.name, platform=target.platform, type=str(target.type),
                state=self._state(target.name, now, probed=sample is not None),
                threshold_s=info.rule.threshold, host=target.host, detail=detail))
        return out

    def _state(self, name: str, now: float, *, probed: bool) -> ServiceStateName:
        if self._maintenance.covered(name, now):
            return "maintenance"
        return self._judge(name, now, probed=probed)

    def _verdict(self, name: str, now: float, *, probed: bool) -> ServiceStateName:  # noqa: ARG002
        """One daemon: its engine's verdict."""
        verdict = self._engine.verdict(name)
        if verdict.health is Health.OUTAGE:
            return "outage"
        if self._engine.is_bad(name):
            return "degraded"
        if not probed and verdict.last_start is None and not self._engine.recent(name):
            return "unknown"
        return "operational"

    async def response_times(self, since: float
                             ) -> dict[str, list[tuple[float, float | None, bool]]]:
        return await self._history.response_times([t.name for t in self._targets], since,
                                                  now=self.now())

    async def daily(self, days: int) -> dict[str, list[tuple[str, float | None]]]:
        out: dict[str, list[tuple[str, float | None]]] = {}
        for platform in sorted({t.platform for t in self._targets}):
            out.update(await self._history.daily(platform, days, now=self.now()))
        return out

    async def incidents(self, since: float) -> list[IncidentView]:
        out = []
        for incident in await self._store.incidents(limit=INCIDENTS_READ):
            if incident.resolved_at is not None and incident.resolved_at < since:
                continue
            messages = _one_per_number(await self._store.thread(
                Thread(ThreadKind.INCIDENT, incident.id).key))
            out.append(_incident_view(incident, messages))
        return out

    async def windows(self, since: float) -> list[WindowView]:
        return [_window_view(w) for w in self._maintenance.windows()
                if w.state in {WindowState.SCHEDULED, WindowState.ACTIVE}
                or (w.closed_at or w.end) >= since]

    async def mails(self, since: float, platform: str | None) -> list[FeedEntry]:
        threads: list[tuple[Thread, str]] = [
            (Thread(ThreadKind.INCIDENT, i.id), i.platform)
            for i in await self._store.incidents(limit=INCIDENTS_READ)
            if platform is None or i.platform == platform]
        threads += [(Thread(ThreadKind.MAINTENANCE, w.id), w.platform)
                    for w in self._maintenance.windows()
                    if platform is None or w.platform == platform]
        out = []
        for thread, where in threads:
            for message in _one_per_number(await self._store.thread(thread.key)):
                if message.created < since:
                    continue
                out.append(FeedEntry(
                    id=f"{thread.key}/{message.number}", thread=thread.key,
                    number=message.number, kind=message.kind,
                    subject=str(message.payload.get("subject", "")),
                    body=str(message.payload.get("body", "")), created=message.created,
                    platform=where))
        return out


def _one_per_number(messages: Sequence[StoredMessage]) -> list[StoredMessage]:
    """A thread's messages once each: the outbox holds one per recipient."""
    seen: dict[int, StoredMessage] = {}
    for message in messages:
        seen.setdefault(message.number, message)
    return [seen[n] for n in sorted(seen)]


def _summary(body: str) -> str:
    """A mail's first line, and its expected time to restoration when one is known."""
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for line in lines:
        if line.startswith(_ETR_LINE) and not line.endswith("unknown"):
            text += f" {line}"
            break
    return text


def _incident_view(incident: Incident, messages: Sequence[StoredMessage]) -> IncidentView:
    timeline: list[tuple[float, TimelineKind, str]] = []
    for message in messages:
        kind = _TIMELINE_KINDS.get(message.kind)
        if kind is not None:
            timeline.append((message.created, kind,
                             _summary(str(message.payload.get("body", "")))))
    if not any(kind == "open" for _, kind, _ in timeline):  # no mail: no relay configured
        timeline.append((incident.opened_at, "open",
                         f"Outage of {', '.join(incident.involved) or 'services'}"))
    if incident.resolved_at is not None and not any(k == "resolved" for _, k, _ in timeline):
        timeline.append((incident.resolved_at, "resolved", "Resolved"))
    timeline += [(at, "note", text) for at, text in incident.notes]
    timeline.sort(key=lambda entry: entry[0])
    state: IncidentStateName = ("resolved" if incident.resolved_at is not None
             else "restored" if incident.restored_at is not None else "open")
    return IncidentView(
        id=incident.id, platform=incident.platform, severity=incident.severity, state=state,
        start=incident.started_at,
        end=incident.restored_at if incident.restored_at is not None else incident.resolved_at,
        services=tuple(incident.involved), timeline=tuple(timeline), ticket=incident.ticket,
        etr=incident.etr, impact=incident.impact)


def _window_view(window: Window) -> WindowView:
    return WindowView(
        id=window.id, platform=window.platform, services=window.targets, start=window.start,
        end=window.closed_at if window.closed_at is not None else window.end,
        kind=window.kind.value, state=window.state.value, description=window.description,
        impact=window.impact)


def page_for(server: ServerConfig, source: DaemonStatusSource) -> StatusPage | None:
    """The page and feed on ``source`` as ``server.status_page`` configures them (None when
    it is off), behind the read token for the internal view."""
    config = server.status_page
    if not config.enabled:
        return None
    return StatusPage(
        source, title=config.title, public=config.public,
        read_token=server.read_token.get_secret_value() if server.read_token else None,
        token=server.token.get_secret_value() if server.token else None)
