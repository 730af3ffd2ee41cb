"""The scheduler on a fake clock: rhythm, offsets, no overlap, the in-flight cap and its fair
shares, overload made loud, overdue marking, stalls of the daemon's own, and live
reconfiguration."""

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
    def __init__(self, durations=None, max_in_flight=100, *, stalls=None, results=None):
        self.clock = FakeClock()
        self.durations = durations or {}
        self.results = results or {}
        self.starts = defaultdict(list)
        self.recorder = _Recorder(self.clock)
        self.registry = CollectorRegistry()
        self.metrics = build_metrics(self.registry, buckets=(1.0, 10.0))
        self.faults = _Faults()
        self.concurrent = 0
        self.max_concurrent = 0
        self.scheduler = Scheduler(clock=self.clock, probe=self.probe, recorder=self.recorder,
                                   metrics=self.metrics, max_in_flight=max_in_flight,
                                   faults=self.faults, stalls=stalls)

    async def probe(self, target, rule):
        self.starts[target.name].append(self.clock.monotonic())
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        started = self.clock.now() + timedelta(microseconds=7)  # run_probe stamps its own
        duration = self.durations.get(target.name, 0.5)
        try:
            await self.clock.sleep(duration)
        finally:
            self.concurrent -= 1
        return Sample(target=target.name, started_at=started, duration=duration,
                      result=self.results.get(target.name, Result.OK))

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
    def __init__(self, clock):
        self.clock = clock
        self.samples = defaultdict(list)
        self.overdue_calls = []
        self.overdue_at = []  # when each overdue report came (monotonic)
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
        self.overdue_at.append(self.clock.monotonic())


class _Faults:
    """The fault registry's two calls, remembered (faults.Faults in the daemon)."""

    def __init__(self):
        self.active = {}
        self.raised = []
        self.cleared = []

    def report(self, name, cause, *, blocking=False):
        assert not blocking  # overload leaves the daemon working: it is loud, not unready
        if name not in self.active:
            self.raised.append(name)
        self.active[name] = cause

    def clear(self, name):
        if self.active.pop(name, None) is not None:
            self.cleared.append(name)


class _Stalls:
    """Stalls of the event loop, as looplag.LoopLag reports them, given by the test."""

    def __init__(self):
        self.spans = []  # (begin, end), monotonic

    def stalled(self, since, until, *, longer_than=0.0):
        return sum(max(0.0, min(end, until) - max(begin, since)) for begin, end in self.spans
                   if end - begin >= longer_than)


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
            "outagewatch_probe_runs_skipped_total", target="slow", type="http", platform="eu",
            reason="previous_run_in_flight")
        assert 0 == h.metric("outagewatch_probe_runs_skipped_total", target="slow",
                             type="http", platform="eu", reason="overload")
        assert [] == h.faults.raised  # a slow target is its own business, not overload

    async def test_in_flight_cap(self):
        """No more probes run at once than max_in_flight; the rest wait their turn."""
        names = [f"t{i}" for i in range(30)]
        h = Harness(durations=dict.fromkeys(names, 9.0), max_in_flight=4)
        h.apply([http(n) for n in names])
        async with h:
            await h.clock.advance(60)
        assert 4 == h.max_concurrent
        assert h.metric("outagewatch_schedule_lag_seconds_count", platform="eu") > 0
        assert 4 == h.metric("outagewatch_probe_capacity")

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


def _on(platform, name):
    return make_target(type="http", name=name, platform=platform, url="http://127.0.0.1:1/")


def _gaps(starts):
    return [round(b - a, 6) for a, b in itertools.pairwise(starts)]


class TestOverload:
    """Issue 10, item 3: thousands of blackholed targets must not starve the scheduler, and
    what the daemon cannot do is loud (DESIGN 4.3)."""

    def blackhole(self, max_in_flight=8, hung=40):
        """``hung`` targets on platform bh that hang until their timeout (8 s of every 10),
        a control target on platform us, and room for ``max_in_flight`` runs."""
        names = [f"bh{i}" for i in range(hung)]
        h = Harness(durations={**dict.fromkeys(names, 8.0), "ctl": 0.5},
                    max_in_flight=max_in_flight)
        h.apply([*(_on("bh", n) for n in names), _on("us", "ctl")])
        return h, names

    async def test_a_blackhole_does_not_starve_another_platform(self):
        """Another platform's target runs every interval, on time, never skipped: its runs
        never land more than ``2 x interval + timeout`` apart, so its streaks stand."""
        h, _ = self.blackhole()
        async with h:
            await h.clock.advance(200)
        starts = h.starts["ctl"]
        assert len(starts) >= 19
        assert [10.0] * (len(starts) - 1) == _gaps(starts)
        assert 0 == h.scheduler.skipped("ctl")
        lag = h.metric("outagewatch_schedule_lag_seconds_sum", platform="us")
        assert 0.0 == lag

    async def test_overload_is_counted_per_platform_and_raised_as_a_fault(self):
        """The blackholed platform's runs that found no room wait (and are counted), the ones
        still waiting when due again are skipped with reason overload, the lag is measured
        for that platform, and ``scheduler_overload`` is raised (not blocking), then cleared
        once the daemon keeps up again."""
        h, names = self.blackhole()
        async with h:
            await h.clock.advance(100)
            assert 8 == h.max_concurrent
            overload = sum(h.metric("outagewatch_probe_runs_skipped_total", target=n,
                                    type="http", platform="bh", reason="overload")
                           for n in names)
            assert overload > 0
            assert h.metric("outagewatch_probe_runs_waiting", platform="bh") > 0
            assert h.metric("outagewatch_schedule_lag_seconds_sum", platform="bh") > 0
            assert ["scheduler_overload"] == h.faults.raised
            assert "probe capacity" in h.faults.active["scheduler_overload"]
            h.durations.update(dict.fromkeys(names, 0.5))  # the blackhole is gone
            await h.clock.advance(200)
        assert ["scheduler_overload"] == h.faults.cleared
        assert 0 == h.metric("outagewatch_probe_runs_waiting", platform="bh")

    async def test_the_runs_wait_their_turn_fairly_within_the_capacity(self):
        """With the capacity full, every blackholed target still gets runs (round-robin by
        platform, first come first served within one): none is starved for good."""
        h, names = self.blackhole()
        async with h:
            await h.clock.advance(300)
        assert all(h.starts[n] for n in names)
        assert 8 == h.max_concurrent

    async def test_a_waiting_run_is_timed_from_its_real_start(self):
        """A run that waited for room reports its start when it really starts, its sample
        carries that start, and its threshold counts from it."""
        h = Harness(durations={"a": 7.0, "b": 7.0}, max_in_flight=1)
        h.apply([_on("eu", "a"), _on("eu", "b")])
        async with h:
            await h.clock.advance(30)
        first, second = sorted(h.recorder.starts, key=lambda s: s[1])[:2]
        assert (first[1] + timedelta(seconds=7)) == second[1]  # b waited for a to end
        assert [5.0, 5.0] == [round(at - start, 6) for at, start in zip(
            h.recorder.overdue_at, sorted(h.starts["a"] + h.starts["b"]), strict=False)][:2]
        recorded = {s.started_at for samples in h.recorder.samples.values() for s in samples}
        assert {first[1], second[1]} <= recorded

    async def test_a_run_made_late_by_overload_skips_the_next_as_overload(self):
        """A run that started late for want of room and is still going when its target is
        due again makes that run skip for overload, not for the target's own slowness."""
        h = Harness(durations={"a": 8.0, "b": 8.0}, max_in_flight=1)
        h.apply([_on("eu", "a"), _on("eu", "b")])
        async with h:
            await h.clock.advance(60)
        skipped = {(n, reason): h.metric("outagewatch_probe_runs_skipped_total", target=n,
                                         type="http", platform="eu", reason=reason)
                   for n in "ab" for reason in ("previous_run_in_flight", "overload")}
        assert 0 == skipped["a", "previous_run_in_flight"] + skipped["b", "previous_run_in_flight"]
        assert skipped["a", "overload"] + skipped["b", "overload"] > 0

    async def test_a_stalled_loop_skips_runs_as_overload(self):
        """Runs the loop missed because it fell a whole interval behind are overload too."""
        h = Harness()
        h.apply([_on("eu", "a")])
        second = h.clock.monotonic() + stable_offset("a", 10.0) + 10.0
        async with h:
            await h.clock.advance(10)
            h.clock._now += 35  # the loop stood still: no timer ran meanwhile
            await h.clock.advance(1)
            now = h.clock.monotonic()
        # the run due at ``second`` starts late; those due after it, up to now, are lost
        assert (now - second) // 10 == h.metric(
            "outagewatch_probe_runs_skipped_total", target="a", type="http", platform="eu",
            reason="overload")
        assert h.metric("outagewatch_schedule_lag_seconds_sum", platform="eu") > 25
        assert ["scheduler_overload"] == h.faults.raised

    async def test_a_slow_start_is_not_overload(self):
        """Runs that fell due while the daemon was still starting (targets applied, the loop
        not yet running) are planned from the start, in the same rhythm: no lag, no skip."""
        names = [f"t{i}" for i in range(20)]
        h = Harness()
        h.apply([_on("eu", n) for n in names])
        epoch = h.clock.monotonic()
        await h.clock.advance(25)  # e.g. 10,000 targets' series being created
        async with h:
            await h.clock.advance(30)
        assert 0 == h.metric("outagewatch_schedule_lag_seconds_sum", platform="eu")
        assert [] == h.faults.raised
        for name in names:
            assert all(round((s - epoch - stable_offset(name, 10.0)) % 10.0, 6) in {0.0, 10.0}
                       for s in h.starts[name])

    async def test_the_default_capacity_comes_from_the_open_file_limit(self):
        """Without max_in_flight the cap is what the descriptors allow; a configured cap
        above that is lowered to it, since a run past it would fail on its own socket."""
        from outagewatch import capacity

        allowed = capacity.budget(capacity.open_files())
        assert allowed == Harness(max_in_flight=None).scheduler.capacity
        assert allowed == Harness(max_in_flight=allowed * 4).scheduler.capacity
        assert 7 == Harness(max_in_flight=7).scheduler.capacity


class TestStalls:
    """Issue 10, item 15: a run is never charged with the daemon's own stalls."""

    async def first_run(self, h, name="a"):
        return h.clock.monotonic() + stable_offset(name, RULE.interval)

    async def test_a_run_bad_only_because_the_loop_stood_still_is_discounted(self):
        """A 6 s run against a 5 s threshold, 5 s of which the loop stood still: neither
        overdue nor BAD, but reported abandoned (unseen), counted and logged."""
        stalls = _Stalls()
        h = Harness(durations={"a": 6.0}, stalls=stalls)
        start = await self.first_run(h)
        stalls.spans.append((start + 0.5, start + 5.5))
        h.apply([_on("eu", "a")])
        with capture_logs() as logs:
            async with h:
                await h.clock.advance(start - h.clock.monotonic() + 7)
        assert [] == h.recorder.overdue_calls
        assert [] == h.recorder.samples["a"]
        assert ["a"] == [name for name, _ in h.recorder.abandoned_calls]
        assert 1 == h.metric("outagewatch_probe_runs_discounted_total", target="a",
                             type="http", platform="eu")
        (event,) = [e for e in logs if e["event"] == "probe_run_discounted"]
        assert 5.0 == event["stalled_s"]
        assert ["event_loop_stalled"] == h.faults.raised

    async def test_a_stall_excuses_one_run_not_the_next_too(self):
        """A saturated daemon stands still run after run: the first BAD run is discounted,
        the next counts (a dead server is still declared, however loaded the daemon)."""
        stalls = _Stalls()
        h = Harness(durations={"a": 6.0}, results={"a": Result.TIMEOUT}, stalls=stalls)
        start = await self.first_run(h)
        for k in range(3):  # every run stands still for 5 of its 6 s
            stalls.spans.append((start + k * 10 + 0.5, start + k * 10 + 5.5))
        h.apply([_on("eu", "a")])
        with capture_logs() as logs:
            async with h:
                await h.clock.advance(start - h.clock.monotonic() + 27)
        assert ["a"] == [name for name, _ in h.recorder.abandoned_calls], "one run excused"
        assert [Result.TIMEOUT, Result.TIMEOUT] == [s.result for s in h.recorder.samples["a"]]
        assert 2 == len([e for e in logs if e["event"] == "probe_run_counted_despite_stall"])

    async def test_the_threshold_counts_only_the_time_the_loop_ran(self):
        """A stall of 1 s during a run moves its overdue moment 1 s later; the run is BAD
        by its own time then, and recorded so."""
        stalls = _Stalls()
        h = Harness(durations={"a": 9.0}, stalls=stalls)
        start = await self.first_run(h)
        stalls.spans.append((start + 1.0, start + 2.0))
        h.apply([_on("eu", "a")])
        async with h:
            await h.clock.advance(start - h.clock.monotonic() + 9.5)
        assert [start + 6.0] == h.recorder.overdue_at
        assert [9.0] == [s.duration for s in h.recorder.samples["a"]]
        assert [] == h.recorder.abandoned_calls

    @pytest.mark.parametrize("result", [Result.REFUSED, Result.PROTOCOL])
    async def test_a_failure_of_its_own_is_never_discounted(self, result):
        """A stall does not refuse a connection: such a run stays BAD."""
        stalls = _Stalls()
        h = Harness(durations={"a": 6.0}, results={"a": result}, stalls=stalls)
        start = await self.first_run(h)
        stalls.spans.append((start + 0.5, start + 5.5))
        h.apply([_on("eu", "a")])
        async with h:
            await h.clock.advance(start - h.clock.monotonic() + 7)
        assert [result] == [s.result for s in h.recorder.samples["a"]]
        assert [] == h.recorder.abandoned_calls

    async def test_a_busy_loop_is_no_excuse(self):
        """Short lateness of a busy loop (under a tenth of the threshold each time) is not a
        stall: a dead server's timeout stays BAD, however much of it there was."""
        stalls = _Stalls()
        h = Harness(durations={"a": 8.0}, results={"a": Result.TIMEOUT}, stalls=stalls)
        start = await self.first_run(h)
        stalls.spans.extend((start + k * 0.5, start + k * 0.5 + 0.4) for k in range(16))
        h.apply([_on("eu", "a")])
        async with h:
            await h.clock.advance(start - h.clock.monotonic() + 9)
        assert [start + 5.0] == h.recorder.overdue_at
        assert [Result.TIMEOUT] == [s.result for s in h.recorder.samples["a"]]
        assert [] == h.recorder.abandoned_calls

    async def test_a_good_run_is_good_whatever_the_loop_did(self):
        stalls = _Stalls()
        h = Harness(durations={"a": 1.0}, stalls=stalls)
        start = await self.first_run(h)
        stalls.spans.append((start, start + 0.9))
        h.apply([_on("eu", "a")])
        async with h:
            await h.clock.advance(start - h.clock.monotonic() + 2)
        assert [Result.OK] == [s.result for s in h.recorder.samples["a"]]
        assert 0 == h.metric("outagewatch_probe_runs_discounted_total", target="a",
                             type="http", platform="eu")


def test_the_fake_clock_never_goes_back():
    """A fake clock that could go back would hide bugs a real one never shows."""
    clock = FakeClock()
    with pytest.raises(ValueError, match="does not go back"):
        asyncio.run(clock.advance(-1))
