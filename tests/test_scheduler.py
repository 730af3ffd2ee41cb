"""The scheduler on a fake clock: rhythm, offsets, no overlap, the in-flight cap, overdue
marking and live reconfiguration."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs
from tests.helpers.fakeclock import FakeClock
from tests.helpers.targets import make_target

from outagewatch.app import labels_of
from outagewatch.metrics import build_metrics
from outagewatch.model import Result, Rule, Sample
from outagewatch.scheduler import Scheduler, stable_offset

RULE = Rule(interval=10.0, timeout=8.0, threshold=5.0, window=60.0, recover_after=2)


class Harness:
    def __init__(self, durations=None, max_in_flight=100):
        self.clock = FakeClock()
        self.durations = durations or {}
        self.starts = defaultdict(list)
        self.recorder = _Recorder()
        self.registry = CollectorRegistry()
        self.metrics = build_metrics(self.registry, buckets=(1.0, 10.0))
        self.concurrent = 0
        self.max_concurrent = 0
        self.scheduler = Scheduler(clock=self.clock, probe=self.probe, recorder=self.recorder,
                                   metrics=self.metrics, max_in_flight=max_in_flight)

    async def probe(self, target, rule):
        self.starts[target.name].append(self.clock.monotonic())
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        started = self.clock.now() + timedelta(microseconds=7)  # run_probe stamps its own
        try:
            await self.clock.sleep(self.durations.get(target.name, 0.5))
        finally:
            self.concurrent -= 1
        return Sample(target=target.name, started_at=started,
                      duration=self.durations.get(target.name, 0.5), result=Result.OK)

    def apply(self, targets, rule=RULE):
        for t in targets:
            self.metrics.add_target(labels_of(t))
        self.scheduler.apply([(t, rule) for t in targets])

    async def __aenter__(self):
        self.task = asyncio.create_task(self.scheduler.run())
        await self.clock.settle()
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    def metric(self, name, **labels):
        return self.registry.get_sample_value(name, labels or None)


class _Recorder:
    def __init__(self):
        self.samples = defaultdict(list)
        self.overdue_calls = []
        self.starts = []
        self.abandoned_calls = []

    def started(self, target, rule, started_at):
        self.starts.append((target.name, started_at))

    def abandoned(self, target, rule, started_at):
        self.abandoned_calls.append((target.name, started_at))

    def record(self, target, rule, sample):
        self.samples[target.name].append(sample)

    def overdue(self, target, rule, started_at):
        self.overdue_calls.append((target.name, started_at))


def http(name):
    return make_target(type="http", name=name, url="http://127.0.0.1:1/")


class TestScheduler:
    async def test_runs_every_interval_start_to_start(self):
        """Starts are exactly one interval apart, whatever each run takes."""
        h = Harness(durations={"a": 3.0})
        h.apply([http("a")])
        async with h:
            await h.clock.advance(100)
        starts = h.starts["a"]
        assert len(starts) >= 9
        gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
        assert [10.0] * (len(starts) - 1) == gaps
        assert len(starts) == len(h.recorder.samples["a"]) + (1 if starts[-1] > 1097 else 0)

    async def test_first_runs_are_spread_by_a_stable_offset(self):
        """Each target's first run is at its own stable offset within the interval."""
        names = [f"t{i}" for i in range(50)]
        h = Harness()
        h.apply([http(n) for n in names])
        epoch = h.clock.monotonic()
        async with h:
            await h.clock.advance(10)
        firsts = {n: h.starts[n][0] - epoch for n in names}
        for name in names:
            assert stable_offset(name, 10.0) == pytest.approx(firsts[name])
        assert len({round(v) for v in firsts.values()}) >= 8  # spread, not bunched

    async def test_a_restart_keeps_the_rhythm(self):
        """A second scheduler (the daemon restarted) runs each target at the same offset in
        its interval as the first did: the offset depends on the name only."""
        names = [f"t{i}" for i in range(20)]
        offsets = []
        for _ in range(2):
            h = Harness()
            h.apply([http(n) for n in names])
            epoch = h.clock.monotonic()
            async with h:
                await h.clock.advance(10)
            offsets.append({n: round(h.starts[n][0] - epoch, 9) for n in names})
        assert offsets[0] == offsets[1]
        assert 0 <= min(offsets[0].values()) < max(offsets[0].values()) < 10

    async def test_never_two_runs_of_one_target(self):
        """A run longer than the interval makes the next one skip, and the skip is counted."""
        h = Harness(durations={"slow": 25.0})
        h.apply([http("slow")])
        async with h:
            await h.clock.advance(100)
        starts = h.starts["slow"]
        assert all(b - a >= 25.0 for a, b in itertools.pairwise(starts))
        assert h.scheduler.skipped("slow") >= 5
        assert h.scheduler.skipped("slow") == h.metric(
            "outagewatch_probe_runs_skipped_total", target="slow", type="http", platform="eu")

    async def test_in_flight_cap(self):
        """No more probes run at once than max_in_flight; the rest wait their turn."""
        names = [f"t{i}" for i in range(30)]
        h = Harness(durations=dict.fromkeys(names, 9.0), max_in_flight=4)
        h.apply([http(n) for n in names])
        async with h:
            await h.clock.advance(60)
        assert 4 == h.max_concurrent
        assert h.metric("outagewatch_schedule_lag_seconds_count") > 0

    async def test_overdue_at_threshold(self):
        """A run still going when the threshold passes is reported then, not at its end."""
        h = Harness(durations={"hang": 7.0, "quick": 1.0})
        h.apply([http("hang"), http("quick")])
        async with h:
            await h.clock.advance(16)  # first runs within 10 s, threshold 5 s after
        assert ["hang"] == [name for name, _ in h.recorder.overdue_calls]

    async def test_overdue_marks_metrics(self):
        """An overdue run turns probe_success to 0 and sets probe_overdue while it lasts."""
        from outagewatch.recorder import SampleRecorder

        h = Harness(durations={"hang": 7.0})
        h.scheduler._recorder = SampleRecorder(h.metrics)
        h.apply([http("hang")])
        labels = {"target": "hang", "type": "http", "platform": "eu"}
        first = h.clock.monotonic() + stable_offset("hang", 10.0)
        async with h:
            await h.clock.advance(first - h.clock.monotonic() + 5.5)
            assert 1 == h.metric("outagewatch_probe_overdue", **labels)
            assert 0 == h.metric("outagewatch_probe_success", **labels)
            await h.clock.advance(2)
            assert 0 == h.metric("outagewatch_probe_overdue", **labels)

    async def test_reload_adds_changes_and_removes(self):
        """Added targets start, removed ones stop, and the others keep their rhythm."""
        h = Harness()
        h.apply([http("keep"), http("drop")])
        async with h:
            await h.clock.advance(30)
            keep_before = list(h.starts["keep"])
            drop_count = len(h.starts["drop"])
            h.apply([http("keep"), http("new")])
            await h.clock.advance(30)
        assert drop_count == len(h.starts["drop"])
        assert len(h.starts["new"]) >= 2
        keep = h.starts["keep"]
        assert keep[: len(keep_before)] == keep_before
        assert all(round(b - a, 6) == 10.0 for a, b in itertools.pairwise(keep))

    async def test_interval_change_takes_effect(self):
        h = Harness()
        h.apply([http("a")])
        async with h:
            await h.clock.advance(30)
            h.apply([http("a")], rule=Rule(3.0, 2.5, 2.0, 60.0, 2))
            count = len(h.starts["a"])
            await h.clock.advance(30)
        assert len(h.starts["a"]) - count >= 9

    async def test_probe_crash_does_not_stop_the_schedule(self):
        """A bug in a probe is logged; the target keeps being scheduled."""
        h = Harness()
        calls = []

        async def broken(target, rule):
            calls.append(h.clock.monotonic())
            raise RuntimeError("bug")

        h.scheduler._probe = broken
        h.apply([http("a")])
        with capture_logs() as logs:
            async with h:
                await h.clock.advance(35)
        assert len(calls) >= 3
        assert len(calls) == len([e for e in logs if e["event"] == "probe_crashed"])
        # each crashed run is reported as abandoned (not BAD, not GOOD), with its start
        assert [s for _, s in h.recorder.starts] == [s for _, s in h.recorder.abandoned_calls]

    async def test_every_run_is_reported_when_it_starts(self):
        """The evaluator hears of each run when it starts, and its sample carries that start
        whatever the probe stamped, so the two are one run."""
        h = Harness(durations={"a": 2.0})
        h.apply([http("a")])
        async with h:
            await h.clock.advance(35)
        starts = [s for _, s in h.recorder.starts]
        assert len(starts) >= 3
        assert starts[:len(h.recorder.samples["a"])] == [
            s.started_at for s in h.recorder.samples["a"]]

    async def test_heartbeat(self):
        """The loop goes round at least once a second, even with nothing due."""
        h = Harness()
        h.apply([make_target(type="http", name="a", url="http://x/")],
                rule=Rule(3600.0, 35.0, 30.0, 900.0, 2))
        async with h:
            await h.clock.advance(5)
            assert h.clock.monotonic() - h.scheduler.heartbeat <= 1.0


def test_the_fake_clock_never_goes_back():
    """A fake clock that could go back would hide bugs a real one never shows."""
    clock = FakeClock()
    with pytest.raises(ValueError, match="does not go back"):
        asyncio.run(clock.advance(-1))
