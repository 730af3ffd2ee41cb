"""The verdict against a deliberately simple oracle, plus a table test per rule."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outagewatch.core.evaluator import (
    Declared,
    Health,
    Observation,
    Restored,
    Verdict,
    Window,
    next_deadline,
    observe,
    tick,
)


@dataclass(frozen=True)
class Run:
    start: int
    duration: int
    failed: bool


def is_bad(run: Run, rule: Window) -> bool:
    return run.failed or run.duration > rule.threshold


def known_at(run: Run, rule: Window) -> float:
    """A BAD run is known as soon as it fails or its threshold passes; a GOOD one at its end."""
    if is_bad(run, rule):
        return run.start + min(run.duration, rule.threshold)
    return run.start + run.duration


def drive(runs: list[Run], rule: Window, end: int) -> list[tuple]:
    """The daemon's way: observations in arrival order, a timer at each next deadline."""
    arrivals: list[tuple[float, Observation]] = []
    for run in runs:
        if is_bad(run, rule) and run.duration > rule.threshold:
            arrivals.append((run.start + rule.threshold, Observation(run.start, True, False)))
            arrivals.append((run.start + run.duration, Observation(run.start, True, True)))
        else:
            arrivals.append((run.start + run.duration, Observation(run.start, is_bad(run, rule))))
    arrivals.sort(key=lambda a: a[0])
    state, out = Verdict(), []
    for arrived, obs in [*arrivals, (float("inf"), None)]:
        deadline = next_deadline(state, rule)
        if deadline is not None and deadline < arrived and deadline <= end:
            state, events = tick(state, deadline, rule)
            out += events
        if obs is None or arrived > end:
            break
        state, events = observe(state, obs, arrived=arrived, rule=rule)
        out += events
    state, events = tick(state, end, rule)
    out += events
    return [(type(e).__name__, *_fields(e)) for e in out]


def _fields(event) -> tuple:
    if isinstance(event, Declared):
        return (event.outage_start, event.at)
    return (event.outage_start, event.restored_at, event.at)


def oracle(runs: list[Run], rule: Window, end: int) -> list[tuple]:
    """The definitions, re-evaluated from scratch at every second."""
    out: list[tuple] = []
    outage_start = None
    for t in range(end + 1):
        known = [r for r in runs if known_at(r, rule) <= t]
        if outage_start is None:
            begin = 0  # the streak may only start after the last GOOD run and the last gap
            for i, run in enumerate(known):
                if not is_bad(run, rule):
                    begin = i + 1
                elif i and run.start - known[i - 1].start > rule.coverage_gap:
                    begin = i
            streak = known[begin:]
            if streak and all(is_bad(r, rule) for r in streak):
                start = streak[0].start
                due = start + rule.window
                if t >= due and known[-1].start >= due - rule.coverage_gap:
                    out.append(("Declared", start, t))
                    outage_start = start
                    declared_count = len(known)
        else:
            tail = known[declared_count:]
            good = 0
            for run in reversed(tail):
                if is_bad(run, rule):
                    break
                good += 1
            if good >= rule.recover_after:
                first = tail[len(tail) - good]
                out.append(("Restored", outage_start, first.start, t))
                outage_start = None
    return out


@st.composite
def scenarios(draw):
    threshold = draw(st.integers(1, 6))
    timeout = draw(st.integers(threshold + 1, 12))
    interval = draw(st.integers(1, 8))
    rule = Window.of(interval=interval, timeout=timeout, threshold=threshold,
                     window=draw(st.integers(1, 40)), recover_after=draw(st.integers(1, 3)))
    runs, start = [], draw(st.integers(0, 5))
    for _ in range(draw(st.integers(0, 30))):
        duration = draw(st.integers(1, timeout))
        failed = draw(st.booleans())
        runs.append(Run(start, duration, failed))
        start += duration + draw(st.one_of(st.integers(0, interval), st.integers(0, 60)))
    return rule, runs, start + 5


@settings(max_examples=1500, deadline=None)
@given(scenarios())
def test_matches_oracle(scenario):
    """Declarations and recoveries, with their times, are those the definitions give."""
    rule, runs, end = scenario
    assert oracle(runs, rule, end) == drive(runs, rule, end)


RULE = Window.of(interval=60, timeout=35, threshold=30, window=900, recover_after=2)


def feed(runs, rule=RULE, end=None):
    runs = [Run(*r) for r in runs]
    return drive(runs, rule, end if end is not None else runs[-1].start + 100)


class TestRules:
    def test_outage_declared_exactly_at_window(self):
        """BAD from t=0 every 60 s: OUTAGE at 900 s sharp (the timer), starting at 0."""
        runs = [(t, 31, False) for t in range(0, 1200, 60)]
        assert ("Declared", 0, 900) == feed(runs)[0]

    def test_good_sample_just_before_resets(self):
        """A GOOD run arriving a moment before the window closes starts the count anew."""
        runs = [(t, 31, False) for t in range(0, 840, 60)] + [(840, 1, False)]
        runs += [(t, 31, False) for t in range(900, 1900, 60)]
        assert ("Declared", 900, 1800) == feed(runs)[0]

    def test_good_one_millisecond_before_the_window(self):
        """BAD from 0 and a GOOD run arriving at 899.999 s: no outage at 900 s."""
        state = Verdict()
        for start in range(0, 900, 60):
            state, _ = observe(state, Observation(start, True), arrived=start + 31, rule=RULE)
        state, events = observe(state, Observation(899.0, False), arrived=899.999, rule=RULE)
        assert ([], Health.OK) == (events, state.health)
        state, events = tick(state, 900.0, RULE)
        assert ([], None) == (events, next_deadline(state, RULE))

    def test_good_arriving_at_the_deadline_prevents_it(self):
        rule = Window.of(interval=5, timeout=8, threshold=5, window=10, recover_after=1)
        runs = [(0, 6, False), (6, 3, False)]  # GOOD run arrives at 9... and one at 10:
        assert [] == feed([*runs, (9, 1, False)], rule, end=10)

    def test_slow_but_successful_is_bad(self):
        runs = [(t, 31, False) for t in range(0, 1000, 60)]
        assert feed(runs)[0][0] == "Declared"

    def test_failures_count_at_once(self):
        runs = [(t, 1, True) for t in range(0, 1000, 60)]
        assert ("Declared", 0, 900) == feed(runs)[0]

    def test_in_flight_past_threshold_is_bad_then(self):
        """With window 5 s, a run hanging from t=0 is BAD at 30 s, so OUTAGE at 30 s, not
        when it times out at 35 s."""
        rule = Window.of(interval=60, timeout=35, threshold=30, window=5, recover_after=2)
        assert ("Declared", 0, 30) == feed([(0, 35, True)], rule)[0]

    def test_gap_breaks_the_streak(self):
        """A gap longer than 2 x interval + timeout (155 s) restarts the streak after it."""
        runs = [(t, 31, False) for t in range(0, 600, 60)]
        runs += [(t, 31, False) for t in range(800, 2000, 60)]
        assert ("Declared", 800, 1700) == feed(runs)[0]

    def test_short_gap_keeps_the_streak(self):
        runs = [(t, 31, False) for t in range(0, 600, 60)]
        runs += [(t, 31, False) for t in range(680, 2000, 60)]  # 140 s after 540
        assert ("Declared", 0, 900) == feed(runs)[0]

    def test_recovery_after_two_good(self):
        """Two GOOD runs end it; the restore time is the first one's start."""
        runs = [(t, 31, False) for t in range(0, 1200, 60)] + [(1200, 1, False), (1260, 1, False)]
        events = feed(runs)
        assert [("Declared", 0, 900), ("Restored", 0, 1200, 1261)] == events

    def test_flapping_during_outage_does_not_recover(self):
        runs = [(t, 31, False) for t in range(0, 960, 60)]
        runs += [(960, 1, False), (1020, 31, False), (1080, 1, False), (1140, 31, False)]
        assert [("Declared", 0, 900)] == feed(runs)

    def test_flapping_before_declaration_never_declares(self):
        runs = [(t, 31 if (t // 60) % 2 else 1, False) for t in range(0, 3600, 60)]
        assert [] == feed(runs)

    def test_next_deadline(self):
        """The timer fires at streak start + window; not a millisecond earlier."""
        rule = RULE
        state = Verdict()
        for start in range(100, 1000, 60):
            state, _ = observe(state, Observation(start, True), arrived=start + 31, rule=rule)
        assert Health.BAD == state.health
        assert 1000 == next_deadline(state, rule)
        state, events = tick(state, 999.999, rule)
        assert ([], Health.BAD) == (events, state.health)
        state, events = tick(state, 1000, rule)
        assert ([Declared(100, 1000)], Health.OUTAGE) == (events, state.health)
        assert next_deadline(state, rule) is None

    def test_no_declaration_without_coverage(self):
        """A lone BAD run long ago does not become an outage: nobody watched since."""
        state, _ = observe(Verdict(), Observation(100, True), arrived=131, rule=RULE)
        state, events = tick(state, 5000, RULE)
        assert ([], Health.BAD) == (events, state.health)

    def test_restored_event_fields(self):
        rule = Window.of(interval=1, timeout=2, threshold=1, window=1, recover_after=1)
        state, _ = observe(Verdict(), Observation(0, True), arrived=1, rule=rule)
        state, events = observe(state, Observation(1, True), arrived=2, rule=rule)
        assert [Declared(0, 1)] == events or state.health is Health.OUTAGE
        state, events = observe(state, Observation(5, False), arrived=5.5, rule=rule)
        assert [Restored(0, 5, 5.5)] == events


@pytest.mark.parametrize("recover_after", [1, 2, 3])
def test_recover_after_counts(recover_after):
    rule = Window.of(interval=60, timeout=35, threshold=30, window=60, recover_after=recover_after)
    runs = [(0, 31, False), (60, 31, False), (120, 31, False)]
    runs += [(180 + 60 * i, 1, False) for i in range(recover_after)]
    events = feed(runs, rule)
    assert ("Restored", 0, 180) == events[-1][:3]


class TestMaintenanceHold:
    """Inside a maintenance window (600 s to 1800 s here) BAD runs open nothing; a streak
    that goes on past the end counts from the end."""

    END = 1800.0

    def run(self, runs, window_start=600):
        from outagewatch.core.evaluator import hold

        state, events = Verdict(), []
        for start, bad in runs:
            state, new = observe(state, Observation(start, bad), arrived=start + 1, rule=RULE)
            events += new
            if window_start <= start < self.END:
                state = hold(state, self.END)
            deadline = next_deadline(state, RULE)
            if deadline is not None and deadline <= start + 60:
                state, new = tick(state, deadline, RULE)
                events += new
        return state, events

    def test_bad_throughout_and_after(self):
        runs = [(t, True) for t in range(600, 3000, 60)]
        _, events = self.run(runs)
        assert [Declared(self.END, self.END + 900)] == events

    def test_healed_at_the_end(self):
        runs = [(t, True) for t in range(600, 1800, 60)] + [(1800, False), (1860, True)]
        state, events = self.run(runs)
        assert [] == events
        assert 1860 == state.streak_start

    def test_outage_before_the_window_stays(self):
        """Declared at 900 s, before a window starting at 1000 s: the outage stays."""
        runs = [(t, True) for t in range(0, 1500, 60)]
        state, events = self.run(runs, window_start=1000)
        assert [Declared(0, 900)] == events
        assert Health.OUTAGE == state.health
