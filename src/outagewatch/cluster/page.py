"""The status page and feed on a cluster (issue 13).

The leader serves them: a service's state is the locations' consensus (outage when the
quorum declared it, degraded when some location sees it fail, unknown when every location
is blind), maintenance is the leader's, and incidents, mails and history come from the
shared store, as on one daemon. Another node forwards the page to the leader, as it forwards
changes, so any node behind a load balancer answers it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

from outagewatch.api import FORWARDED, error
from outagewatch.model import Phase, Result, Sample
from outagewatch.statuspage.live import DaemonStatusSource, page_for

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from outagewatch.clock import Clock
    from outagewatch.cluster.node import Term
    from outagewatch.config import Settings
    from outagewatch.core.maintenance import Window
    from outagewatch.engine import Engine
    from outagewatch.history import History
    from outagewatch.statuspage.source import ServiceStateName
    from outagewatch.statuspage.web import StatusPage
    from outagewatch.store.postgres import PostgresStore

Handler = Callable[[web.Request], "Awaitable[web.StreamResponse]"]
FAILING = frozenset({"outage", "bad"})  # a location's view of a target that fails


class TermWindows:
    """The leader's maintenance windows (none between terms: the page is forwarded then)."""

    def __init__(self, term: Callable[[], Term | None]) -> None:
        self._term = term

    def covered(self, name: str, now: float) -> bool:
        term = self._term()
        return term is not None and term.maintenance.covered(name, now)

    def windows(self) -> Sequence[Window]:
        term = self._term()
        return term.maintenance.windows() if term is not None else []


class NewestSamples(Mapping[str, Sample]):
    """Per target, the newest sample of any location the leader read (it reads those of
    targets some location sees fail), with that location in its detail."""

    def __init__(self, store: PostgresStore, names: Callable[[], Sequence[str]]) -> None:
        self._store = store
        self._names = names

    def __getitem__(self, name: str) -> Sample:
        stored = self._store.recent_of(name)
        if not stored:
            raise KeyError(name)
        newest = max(stored, key=lambda s: s.start)
        return Sample(name, datetime.fromtimestamp(newest.start, UTC), newest.duration,
                      Result(newest.result), Phase(newest.phase) if newest.phase else None,
                      detail=f"seen from {newest.location}" if newest.location else "")

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def judge_of(term: Callable[[], Term | None]) -> Callable[..., ServiceStateName]:
    def judge(name: str, now: float, *, probed: bool) -> ServiceStateName:  # noqa: ARG001
        """Outage by the quorum; degraded when a location sees it fail; unknown when every
        location is blind."""
        leader = term()
        if leader is None:
            return "unknown"
        if leader.consensus.state(name).outage_start is not None:
            return "outage"
        views = leader.consensus.describe(name).values()
        if any(view in FAILING for view in views):
            return "degraded"
        if all(view == "blind" for view in views):
            return "unknown"
        return "operational"

    return judge


def page_of(settings: Settings, *, engine: Engine, store: PostgresStore, clock: Clock,
            history: History, term: Callable[[], Term | None]) -> StatusPage | None:
    """The cluster's status page (None when ``server.status_page.enabled`` is off)."""
    source = DaemonStatusSource(
        engine=engine, maintenance=TermWindows(term), store=store, clock=clock,
        targets=settings.targets, history=history, judge=judge_of(term),
        last=NewestSamples(store, lambda: list(engine.topology.targets)))
    return page_for(settings.server, source)


def at_the_leader(page: StatusPage, *, leading: Callable[[], bool],
                  forward: Handler) -> list[web.RouteDef]:
    """The page's routes: answered here while this node leads, else by the leader."""

    def routed(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            if leading():
                answer = await handler(request)
                if leading():  # still: else it was made from a term that ended meanwhile
                    return answer
            if FORWARDED in request.headers:  # it was sent here as the leader: not any more
                return error(503, "this node no longer leads; try again in a few seconds")
            return await forward(request)
        return run

    return [web.RouteDef(route.method, route.path, routed(route.handler), dict(route.kwargs))
            for route in page.routes() if isinstance(route, web.RouteDef)]
