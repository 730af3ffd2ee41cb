"""The daemon's own faults and the supervision of its tasks, on a fake clock."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs
from tests.helpers.fakeclock import FakeClock

from outagewatch.faults import HEALTHY_AFTER, Faults, supervise
from outagewatch.metrics import build_metrics


def setup():
    registry = CollectorRegistry()
    metrics = build_metrics(registry, buckets=(1.0,))
    clock = FakeClock()
    return registry, metrics, clock, Faults(metrics, clock)


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels)


class TestFaults:
    def test_logged_once_when_raised_and_once_when_cleared(self):
        """A fault that lasts is one log line, not one per occurrence; its end is another."""
        registry, _, _, faults = setup()
        with capture_logs() as logs:
            for _ in range(3):
                faults.report("state_write", "database is locked", blocking=True)
            faults.clear("state_write")
            faults.clear("state_write")
        assert ["fault_raised", "fault_cleared"] == [e["event"] for e in logs]
        assert "database is locked" == logs[0]["cause"]
        assert 0 == value(registry, "outagewatch_fault", fault="state_write")
        assert 1 == value(registry, "outagewatch_faults_total", fault="state_write")

    def test_a_blocking_fault_makes_the_daemon_not_ready(self):
        registry, _, _, faults = setup()
        faults.report("scheduler_overload", "3 platforms behind")
        assert faults.blocking() is None  # degraded, still doing its job
        faults.report("state_write", "disk full", blocking=True)
        assert "state_write: disk full" == faults.blocking()
        assert 1 == value(registry, "outagewatch_fault", fault="state_write")
        assert {"scheduler_overload", "state_write"} == set(faults.active())


class TestSupervise:
    async def test_a_crashing_task_is_restarted_counted_and_loud(self):
        """Issue 10.1: a long-running task that raises is logged with its traceback,
        counted, raised as a blocking fault, and restarted with backoff; once it runs well
        for a while the fault clears (the mailer used to die for good, in silence)."""
        registry, metrics, clock, faults = setup()
        runs = []

        async def flaky():
            runs.append(clock.monotonic())
            if len(runs) <= 2:
                raise RuntimeError("boom")
            await asyncio.Event().wait()

        with capture_logs() as logs:
            task = asyncio.create_task(supervise("drainer", flaky, faults=faults,
                                                 metrics=metrics, clock=clock))
            await clock.advance(0.1)
            assert 1 == len(runs)
            assert "task_drainer" in (faults.blocking() or "")
            await clock.advance(0.5)  # first backoff 0.5 s
            assert 2 == len(runs)
            await clock.advance(1.0)  # then 1 s
            assert 3 == len(runs)
            await clock.advance(HEALTHY_AFTER + 1)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        crashes = [e for e in logs if e["event"] == "task_crashed"]
        assert 2 == len(crashes)
        assert all(e.get("exc_info") for e in crashes)  # with the traceback
        assert 2 == value(registry, "outagewatch_task_restarts_total", task="drainer")
        assert faults.blocking() is None
        assert "fault_cleared" in [e["event"] for e in logs]

    async def test_a_task_that_returns_is_a_crash(self):
        """A long-running task that ends by itself is as wrong as one that raises."""
        registry, metrics, clock, faults = setup()
        calls = []

        async def quits():
            calls.append(1)

        task = asyncio.create_task(supervise("writer", quits, faults=faults, metrics=metrics,
                                             clock=clock))
        await clock.advance(2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert len(calls) >= 2
        assert value(registry, "outagewatch_task_restarts_total", task="writer") >= 2
