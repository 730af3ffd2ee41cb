"""The leader's consensus unit on a fake clock: views in, declarations and restores to the
desk (a recording stand-in), blindness by time alone, degraded targets told loudly but in
one line when many change at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs
from tests.helpers.fakeclock import FakeClock

from outagewatch.app import labels_of
from outagewatch.cluster.consensus import Consensus
from outagewatch.config import Settings
from outagewatch.core.evaluator import Health
from outagewatch.core.quorum import Seen
from outagewatch.engine.timers import Timers
from outagewatch.metrics import build_metrics
from outagewatch.topology import build_topology

if TYPE_CHECKING:
    from outagewatch.store import Changes


@dataclass
class Desk:
    said: list[tuple[str, str, float]] = field(default_factory=list)

    def declared(self, name: str, outage_start: float, now: float, changes: Changes) -> None:
        self.said.append(("declared", name, outage_start))

    def restored(self, name: str, restored_at: float, now: float, changes: Changes) -> None:
        self.said.append(("restored", name, restored_at))

    def forget(self, name: str, now: float, changes: Changes) -> None:
        self.said.append(("forgotten", name, now))


@dataclass
class Writer:
    changes: list[Changes] = field(default_factory=list)

    def submit(self, changes: Changes) -> None:
        self.changes.append(changes)


def unit(targets: int = 1) -> tuple[Consensus, Desk, Writer, FakeClock, Any]:
    settings = Settings(
        platforms={"eu": {}},
        targets=[{"name": f"t{i}", "platform": "eu", "type": "http", "url": "http://x/"}
                 for i in range(targets)],
        defaults={"interval": "60s", "timeout": "35s", "threshold": "30s", "window": "15m"},
        state={"url": "postgresql://ow@db/ow"},
        cluster={"node": "n", "location": "a", "locations": ["a", "b", "c"], "quorum": 2})
    clock = FakeClock()
    metrics = build_metrics(CollectorRegistry(), buckets=(1.0,))
    for target in settings.targets:
        metrics.add_target(labels_of(target))
    desk, writer = Desk(), Writer()
    consensus = Consensus(topology=build_topology(settings, today=clock.now().date()),
                          desk=desk, writer=writer, timers=Timers(clock), clock=clock,
                          metrics=metrics, outages={})
    return consensus, desk, writer, clock, metrics


def now(clock: FakeClock) -> float:
    return clock.now().timestamp()


def test_two_of_three_in_outage_declare_from_the_second_ones_start_and_persist_it():
    consensus, desk, writer, clock, _ = unit()
    t = now(clock)
    consensus.update([("t0", "a", Seen(Health.OUTAGE, t - 10, t - 900)),
                      ("t0", "b", Seen(Health.OK, t - 5, None)),
                      ("t0", "c", Seen(Health.OK, t - 5, None))])
    assert [] == desk.said
    consensus.update([("t0", "b", Seen(Health.OUTAGE, t - 4, t - 880))])
    assert [("declared", "t0", t - 880)] == desk.said
    assert {"t0": t - 880} == writer.changes[-1].consensus
    assert "seen from a and b; c answered normally" == consensus.seen("t0")


async def test_a_location_that_stops_reporting_turns_blind_by_time_alone():
    consensus, desk, _, clock, metrics = unit()
    t = now(clock)
    consensus.update([("t0", "a", Seen(Health.OUTAGE, t, t - 900)),
                      ("t0", "b", Seen(Health.OUTAGE, t, t - 900)),
                      ("t0", "c", Seen(Health.OK, t, None))])
    assert ["declared"] == [kind for kind, _, _ in desk.said]
    await clock.advance(2 * 60 + 35 + 1 + 1)  # blind after 2 x interval + timeout (+ transit)
    assert {"a": "blind", "b": "blind", "c": "blind"} == consensus.describe("t0")
    assert ["declared"] == [kind for kind, _, _ in desk.said], "nobody can say it is back"
    registry = metrics.registry
    assert 0.0 == registry.get_sample_value(
        "outagewatch_cluster_locations_reporting",
        {"target": "t0", "type": "http", "platform": "eu"})


def test_many_targets_degraded_at_once_are_told_in_one_line():
    consensus, _, _, clock, _ = unit(targets=50)
    t = now(clock)
    with capture_logs() as logs:
        consensus.update([(f"t{i}", "a", Seen(Health.OK, t, None)) for i in range(50)])
    degraded = [e for e in logs if e["event"] == "cluster_degraded"]
    assert 1 == len(degraded)
    assert 50 == degraded[0]["targets"]
    with capture_logs() as logs:
        consensus.update([(f"t{i}", "b", Seen(Health.OK, t, None)) for i in range(3)])
    assert [f"t{i}" for i in range(3)] == [e["target"] for e in logs
                                           if e["event"] == "cluster_whole"]
