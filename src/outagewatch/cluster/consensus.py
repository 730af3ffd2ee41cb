"""The leader's verdict across locations: the locations' views to the incident desk.

Every node publishes what its location sees of each target (``Seen``, in the ``views``
table). The leader reads the views that changed (``update``), keeps the latest of each
location, and runs ``core.quorum.combine`` for each target whose views changed, and again when
a location turns blind by time alone (a timer at ``quorum.next_deadline``). A declaration or a
restore goes to the desk, which mails; the target's consensus (its outage start, or none) is
written with it, fenced by the leader's epoch, so that the next leader continues from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import structlog

from outagewatch.core import quorum
from outagewatch.core.evaluator import Declared
from outagewatch.engine.timers import TimerKind
from outagewatch.store import Changes

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from outagewatch.clock import Clock
    from outagewatch.core.quorum import Seen
    from outagewatch.engine.timers import Timers
    from outagewatch.metrics import Metrics
    from outagewatch.topology import Topology

log = structlog.get_logger("outagewatch.cluster")

TOLD_ONE_BY_ONE = 5  # more targets changing at once are told in one line


class OutageDesk(Protocol):
    """Where the consensus tells what it decided (``engine/desk.py``)."""

    def declared(self, name: str, outage_start: float, now: float,
                 changes: Changes) -> None: ...

    def restored(self, name: str, restored_at: float, now: float,
                 changes: Changes) -> None: ...

    def forget(self, name: str, now: float, changes: Changes) -> None: ...


class Submitter(Protocol):
    def submit(self, changes: Changes) -> None: ...


class Consensus:
    def __init__(self, *, topology: Topology, desk: OutageDesk, writer: Submitter,
                 timers: Timers,
                 clock: Clock, metrics: Metrics, outages: Mapping[str, float]) -> None:
        self.topology = topology
        self._desk = desk
        self._writer = writer
        self._timers = timers
        self._clock = clock
        self._metrics = metrics
        self._views: dict[str, dict[str, Seen]] = {}
        self._state = {name: quorum.Consensus(outage_start=start)
                       for name, start in outages.items()}
        self._degraded: set[str] = set()
        self._changed: dict[str, tuple[bool, tuple[str, ...]]] = {}  # since last told

    def configure(self, topology: Topology) -> None:
        self.topology = topology
        gone = Changes()
        for name in list(self._views):
            if name not in topology.targets:
                self._views.pop(name)
                self._timers.cancel(TimerKind.QUORUM, name)
                if self._state.pop(name, None) is not None:
                    gone.consensus[name] = None
                self._desk.forget(name, self._now(), gone)  # "no longer monitored"
        if gone:
            self._writer.submit(gone)

    def close(self) -> None:
        for name in list(self._views):
            self._timers.cancel(TimerKind.QUORUM, name)

    # -- reads --------------------------------------------------------------------------------

    def seen(self, name: str) -> str:
        """Who saw the target's outage, for its mails: "seen from fra and ams; nyc answered
        normally"."""
        rule = self._rule(name)
        if rule is None:
            return ""
        return quorum.seen_phrase(self._views.get(name, {}), now=self._now(), rule=rule)

    def describe(self, name: str) -> dict[str, str]:
        """Each expected location's view of the target now: outage, bad, ok or blind."""
        rule = self._rule(name)
        if rule is None:
            return {}
        return quorum.describe(self._views.get(name, {}), now=self._now(), rule=rule)

    def state(self, name: str) -> quorum.Consensus:
        return self._state.get(name, quorum.Consensus())

    # -- what happened ------------------------------------------------------------------------

    def update(self, rows: Iterable[tuple[str, str, Seen]]) -> None:
        """Views that changed: (target, location, view). Each target decided once."""
        touched: set[str] = set()
        for target, location, seen in rows:
            self._views.setdefault(target, {})[location] = seen
            touched.add(target)
        self._decide(sorted(touched))

    def start(self) -> None:
        """After an election: decide every target once from the views as loaded."""
        self._decide(list(self.topology.targets))

    def _combine(self, name: str) -> None:
        rule = self._rule(name)
        if rule is None:
            return
        now = self._now()
        views = self._views.get(name, {})
        before = self.state(name)
        after, events = quorum.combine(before, views, now=now, rule=rule)
        self._state[name] = after
        if events or after.outage_start != before.outage_start:
            changes = Changes(consensus={name: after.outage_start})
            for event in events:
                if isinstance(event, Declared):
                    log.warning("outage_confirmed", target=name, seen_from=list(after.seen_from),
                                outage_start=event.outage_start)
                    self._desk.declared(name, event.outage_start, now, changes)
                else:
                    log.info("outage_ended", target=name, restored_at=event.restored_at)
                    self._desk.restored(name, event.restored_at, now, changes)
            self._writer.submit(changes)
        self._metrics.report_locations(name, len(quorum.reporting(views, now=now, rule=rule)),
                                       rule.quorum)
        if after.degraded and name not in self._degraded:
            self._degraded.add(name)
            self._changed[name] = (True, quorum.reporting(views, now=now, rule=rule))
        elif not after.degraded and name in self._degraded:
            self._degraded.discard(name)
            self._changed[name] = (False, ())
        self._timers.arm(TimerKind.QUORUM, name,
                         quorum.next_deadline(views, now=now, rule=rule), now=now,
                         callback=lambda: self._decide([name]))

    def _decide(self, names: Iterable[str]) -> None:
        for name in names:
            self._combine(name)
        self._tell()

    def _tell(self) -> None:
        """Targets that became degraded or whole: one line each, or one line for many (an
        election before the other locations have reported would otherwise log thousands)."""
        changed, self._changed = self._changed, {}
        down = {n: where for n, (degraded, where) in changed.items() if degraded}
        whole = sorted(n for n, (degraded, _) in changed.items() if not degraded)
        note = "fewer locations report than the quorum: verdicts need every reporting location"
        if len(down) <= TOLD_ONE_BY_ONE:
            for name, where in sorted(down.items()):
                log.warning("cluster_degraded", target=name, reporting=list(where), note=note)
        else:
            log.warning("cluster_degraded", targets=len(down), first=sorted(down)[:10],
                        note=note)
        if 0 < len(whole) <= TOLD_ONE_BY_ONE:
            for name in whole:
                log.info("cluster_whole", target=name)
        elif whole:
            log.info("cluster_whole", targets=len(whole), first=whole[:10])

    def _rule(self, name: str) -> quorum.QuorumRule | None:
        info = self.topology.targets.get(name)
        return info.quorum if info is not None else None

    def _now(self) -> float:
        return self._clock.now().timestamp()
