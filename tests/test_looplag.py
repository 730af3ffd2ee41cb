"""The event loop's own stalls, measured on the real loop, and never charged to a probe
(issue 10, item 15)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs
from tests.helpers.targets import make_target

from outagewatch.app import labels_of
from outagewatch.clock import SystemClock
from outagewatch.looplag import LoopLag
from outagewatch.metrics import build_metrics
from outagewatch.model import Result, Rule, Sample
from outagewatch.scheduler import Scheduler

BLOCK = 0.4  # seconds the tests block the loop for: far above the monitor's period


def _metrics():
    registry = CollectorRegistry()
    return registry, build_metrics(registry, buckets=(1.0,))


@contextlib.asynccontextmanager
async def running(lag):
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.25)  # a few rounds
    try:
        yield lag
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class TestLoopLag:
    async def test_a_blocked_loop_is_a_stall(self):
        """A callback that blocks the loop shows as a stall overlapping it, and in the
        lag histogram."""
        registry, metrics = _metrics()
        async with running(LoopLag(SystemClock(), metrics)) as lag:
            before = time.monotonic()
            time.sleep(BLOCK)  # noqa: ASYNC251 - the stall under test
            await asyncio.sleep(0.25)
            after = time.monotonic()
            stalled = lag.stalled(before, after)
        assert BLOCK * 0.5 <= stalled <= after - before
        assert 0.0 == lag.stalled(after, after + 1)
        over = registry.get_sample_value("outagewatch_event_loop_lag_seconds_count") - \
            registry.get_sample_value("outagewatch_event_loop_lag_seconds_bucket", {"le": "0.1"})
        assert 1 <= over

    async def test_a_stall_still_going_counts(self):
        """Asked from inside the stall (before the monitor could run again), the time since
        its overdue wake-up counts already."""
        async with running(LoopLag(SystemClock())) as lag:
            before = time.monotonic()
            time.sleep(BLOCK)  # noqa: ASYNC251 - the stall under test
            stalled = lag.stalled(before, time.monotonic())
        assert BLOCK * 0.5 <= stalled

    async def test_a_long_stall_is_logged(self):
        with capture_logs() as logs:
            async with running(LoopLag(SystemClock())):
                time.sleep(1.1)  # noqa: ASYNC251 - the stall under test
                await asyncio.sleep(0.2)
        assert any(e["event"] == "event_loop_stalled" for e in logs)


class _Recorder:
    def __init__(self):
        self.calls = defaultdict(list)

    def started(self, target, rule, started_at):
        self.calls["started"].append(started_at)

    def record(self, target, rule, sample):
        self.calls["record"].append(sample)

    def overdue(self, target, rule, started_at):
        self.calls["overdue"].append(started_at)

    def abandoned(self, target, rule, started_at):
        self.calls["abandoned"].append(started_at)


@pytest.mark.parametrize("stall_where", ["during", "at_the_end"])
async def test_a_run_is_not_bad_because_the_daemon_stalled(stall_where):
    """End to end on the real loop: a run against a healthy service during which the daemon
    itself blocked its loop for longer than the threshold (as a 5 s SQLite busy wait did) is
    reported abandoned, not BAD; no overdue mark either."""
    clock = SystemClock()
    registry, metrics = _metrics()
    recorder = _Recorder()
    lag = LoopLag(clock, metrics)

    async def probe(target, rule):
        t0 = time.monotonic()
        started = clock.now()
        if stall_where == "during":
            time.sleep(BLOCK)  # noqa: ASYNC251 - the daemon's own stall, mid-run
            await asyncio.sleep(0.01)  # the answer, 10 ms later
        else:
            await asyncio.sleep(0.01)
            time.sleep(BLOCK)  # noqa: ASYNC251 - stalled as the answer came
        return Sample(target.name, started, time.monotonic() - t0, Result.OK)

    target = make_target(type="http", name="web", url="http://127.0.0.1:1/")
    metrics.add_target(labels_of(target))
    scheduler = Scheduler(clock=clock, probe=probe, recorder=recorder, metrics=metrics,
                          stalls=lag)
    scheduler.apply([(target, Rule(interval=0.5, timeout=0.3, threshold=0.2, window=5.0,
                                   recover_after=2))])
    async with running(lag):
        task = asyncio.create_task(scheduler.run())
        try:
            while not (recorder.calls["record"] or recorder.calls["abandoned"]):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert [] == recorder.calls["record"]
    assert [] == recorder.calls["overdue"]
    assert recorder.calls["started"][:1] == recorder.calls["abandoned"]
    assert 1 == registry.get_sample_value("outagewatch_probe_runs_discounted_total",
                                          {"target": "web", "type": "http", "platform": "eu"})
