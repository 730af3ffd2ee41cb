"""The verdict against a deliberately simple oracle, plus a table test per rule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outagewatch.core.evaluator import (
    Declared,
    Health,
    Observation,
    OutageRule,
    Restored,
    Verdict,
    abandon,
    begin,
    hold,
    next_deadline,
    observe,
    resume,
    tick,
)


@dataclass(frozen=True)
class Run:
    start: int
    duration: int
    failed: bool
    crash: int | None = None  # the probe crashed this long after its start (abandoned)
    silent: bool = False  # its report is lost: never heard of after its start


def is_bad(run: Run, rule: OutageRule) -> bool:
    return run.failed or run.duration > rule.threshold


def known_at(run: Run, rule: OutageRule) -> float:
    """A BAD run is known as soon as it fails or its threshold passes; a GOOD one at its end."""
    if is_bad(run, rule):
        return run.start + min(run.duration, rule.threshold)
    return run.start + run.duration


Holds = tuple[tuple[int, int | None], ...]  # (from when, floor) in time order


def until(gone: float | None) -> float:
    return math.inf if gone is None else gone


def gone_at(run: Run, rule: OutageRule, restarts: tuple[int, ...]) -> float | None:
    """When a run that never reports is given up: a restart while it was in flight, its
    crash (reported as abandoned), or 2 x interval + timeout after its start (report lost)."""
    if run.crash is not None:
        until: float = run.start + run.crash
    elif run.silent:
        until = run.start + rule.coverage_gap
    else:
        until = known_at(run, rule)
    restart = next((r for r in restarts if run.start <= r < until), None)
    if restart is not None:
        return restart
    return until if run.crash is not None or run.silent else None


def drive(runs: list[Run], rule: OutageRule, end: int, holds: Holds = (),
          restarts: tuple[int, ...] = ()) -> list[tuple]:
    """The daemon's way: each run reported when it starts and when its outcome is known (or
    that it crashed), in time order; a timer at each next deadline; maintenance holds set as
    windows change; restarts forgetting the runs in flight."""
    # (time, order, action): holds, starts, outcomes, crashes, restarts at the same moment
    timeline: list[tuple[float, int, Any]] = [(at, 0, ("hold", floor)) for at, floor in holds]
    timeline += [(at, 4, ("restart", None)) for at in restarts]
    for run in runs:
        timeline.append((run.start, 1, ("begin", run.start)))
        gone = gone_at(run, rule, restarts)
        if gone is not None:
            if run.crash is not None and gone == run.start + run.crash:
                timeline.append((gone, 3, ("abandon", run.start)))
            continue
        if run.duration > rule.threshold:
            timeline.append((run.start + rule.threshold, 2, Observation(run.start, True)))
            timeline.append((run.start + run.duration, 2, Observation(run.start, True)))
        else:
            outcome = Observation(run.start, is_bad(run, rule))
            timeline.append((run.start + run.duration, 2, outcome))
    timeline.sort(key=lambda item: (item[0], item[1]))
    state, out = Verdict(), []
    for at, _, action in [*timeline, (math.inf, 9, None)]:
        deadline = next_deadline(state, rule)
        while deadline is not None and deadline < at and deadline <= end:
            state, events = tick(state, deadline, rule)
            out += events
            later = next_deadline(state, rule)
            assert later is None or later > deadline, "a deadline tick passed without acting"
            deadline = later
        if action is None or at > end:
            break
        if isinstance(action, Observation):
            state, events = observe(state, action, arrived=at, rule=rule)
        elif action[0] == "begin":
            state, events = begin(state, action[1], now=at, rule=rule)
        elif action[0] == "abandon":
            state, events = abandon(state, action[1], now=at, rule=rule)
        elif action[0] == "restart":
            state, events = tick(resume(state, rule), at, rule)
        else:
            state = hold(state, action[1])
            state, events = tick(state, at, rule)
        out += events
    state, events = tick(state, end, rule)
    out += events
    return [(type(e).__name__, *_fields(e)) for e in out]


def _fields(event) -> tuple:
    if isinstance(event, Declared):
        return (event.outage_start, event.at)
    return (event.outage_start, event.restored_at, event.at)


def oracle(runs: list[Run], rule: OutageRule, end: int, holds: Holds = (),
           restarts: tuple[int, ...] = ()) -> list[tuple]:
    """The definitions (DESIGN 4.3-4.4, 4.7), re-evaluated from scratch at every second. A
    run that never reports counts from the moment it is given up as never having run."""
    gone = {run: gone_at(run, rule, restarts) for run in runs}
    out: list[tuple] = []
    outage_start = None
    base = -math.inf  # runs before this belong to an outage already over or declared
    for t in range(end + 1):
        floor = None
        for at, value in holds:
            if at <= t:
                floor = value

        def status(run, t=t):
            if gone[run] is not None:  # given up before its outcome was known
                return "pending"
            if known_at(run, rule) <= t:
                return "bad" if is_bad(run, rule) else "good"
            return "pending"

        changed = True
        while changed:
            changed = False
            started = sorted((r for r in runs if base <= r.start <= t < until(gone[r])),
                             key=lambda r: r.start)
            if outage_start is None:
                for first, stop in streaks(started, rule, status):
                    streak = started[first:stop]
                    start = streak[0].start if floor is None else max(streak[0].start, floor)
                    due = start + rule.window
                    everything_bad = all(status(r) == "bad" for r in started
                                         if streak[0].start <= r.start < due)
                    covered = due - streak[-1].start <= rule.coverage_gap
                    whole = stop == len(started) or started[stop].start >= due
                    if t >= due and everything_bad and covered and whole:
                        out.append(("Declared", start, t))
                        outage_start, base, changed = start, streak[0].start, True
                        break
            else:
                need = rule.recover_after
                for i in range(len(started) - need + 1):
                    if all(status(r) == "good" for r in started[i:i + need]):
                        out.append(("Restored", outage_start, started[i].start, t))
                        outage_start, base, changed = None, started[i].start, True
                        break
    return out


def streaks(started, rule, status):
    """(first, stop) index pairs: runs without a GOOD one and without a coverage gap."""
    result, first = [], None
    for i, run in enumerate(started):
        gap = i > 0 and run.start - started[i - 1].start > rule.coverage_gap
        if first is not None and (gap or status(run) == "good"):
            result.append((first, i))
            first = None
        if first is None and status(run) != "good":
            first = i
    if first is not None:
        result.append((first, len(started)))
    return result


@st.composite
def scenarios(draw, *, overlapping=False, with_holds=False, with_losses=False):
    threshold = draw(st.integers(1, 6))
    timeout = draw(st.integers(threshold + 1, 12))
    interval = draw(st.integers(1, 8))
    rule = OutageRule.of(interval=interval, timeout=timeout, threshold=threshold,
                         window=draw(st.integers(1, 40)), recover_after=draw(st.integers(1, 3)))
    runs, start = [], draw(st.integers(0, 5))
    for _ in range(draw(st.integers(0, 30))):
        duration = draw(st.integers(1, timeout))
        loss = draw(st.sampled_from(["none"] * 6 + ["crash", "silent"])) if with_losses \
            else "none"
        crash = draw(st.integers(0, min(duration, threshold) - 1)) if loss == "crash" else None
        runs.append(Run(start, duration, draw(st.booleans()), crash, loss == "silent"))
        if overlapping:  # the next run may start while this one is still in flight
            start += draw(st.one_of(st.integers(1, interval), st.integers(1, 60)))
        else:
            start += duration + draw(st.one_of(st.integers(0, interval), st.integers(0, 60)))
    end = start + 5
    holds: list[tuple[int, int | None]] = []
    if with_holds and draw(st.booleans()):
        at = draw(st.integers(0, end))
        holds.append((at, at + draw(st.integers(0, 60))))  # a window starts, ends later
        if draw(st.booleans()):  # cancelled (now) or moved (a new end), while it runs
            later = draw(st.integers(at, end))
            holds.append((later, later + draw(st.sampled_from([0, 0, 1, 5, 30]))))
    restarts = tuple(sorted(draw(st.lists(st.integers(0, end), max_size=3, unique=True)))) \
        if with_losses else ()
    return rule, runs, end, tuple(holds), restarts


@settings(max_examples=1500, deadline=None)
@given(scenarios())
def test_matches_oracle(scenario):
    """Declarations and recoveries, with their times, are those the definitions give."""
    rule, runs, end, holds, restarts = scenario
    assert oracle(runs, rule, end, holds, restarts) == drive(runs, rule, end, holds, restarts)


@settings(max_examples=1500, deadline=None)
@given(scenarios(overlapping=True))
def test_matches_oracle_with_overlapping_runs(scenario):
    """Runs in flight together, outcomes arriving out of start order, runs undecided at the
    deadline: still exactly the definitions, in start order."""
    rule, runs, end, holds, restarts = scenario
    assert oracle(runs, rule, end, holds, restarts) == drive(runs, rule, end, holds, restarts)


@settings(max_examples=1500, deadline=None)
@given(scenarios(overlapping=True, with_holds=True))
def test_matches_oracle_with_maintenance_holds(scenario):
    """A hold set when a window starts, then moved or released: the streak counts from the
    window's current end."""
    rule, runs, end, holds, restarts = scenario
    assert oracle(runs, rule, end, holds, restarts) == drive(runs, rule, end, holds, restarts)


@settings(max_examples=1500, deadline=None)
@given(scenarios(overlapping=True, with_holds=True, with_losses=True))
def test_matches_oracle_with_runs_that_never_report(scenario):
    """Probes that crash, reports that are lost, restarts that forget the runs in flight:
    such a run was never seen and nobody was watching, neither BAD nor GOOD nor coverage."""
    rule, runs, end, holds, restarts = scenario
    assert oracle(runs, rule, end, holds, restarts) == drive(runs, rule, end, holds, restarts)


@settings(max_examples=300, deadline=None)
@given(scenarios(overlapping=True, with_holds=True))
def test_state_stays_small(scenario):
    """Whatever the history, the state keeps only what can still matter."""
    rule, runs, *_ = scenario
    state = Verdict()
    for run in runs:
        state, _ = begin(state, run.start, now=run.start, rule=rule)
        state, _ = observe(state, Observation(run.start, is_bad(run, rule)),
                           arrived=run.start + run.duration, rule=rule)
    assert len(state.runs) <= 2 + rule.recover_after


RULE = OutageRule.of(interval=60, timeout=35, threshold=30, window=900, recover_after=2)


def feed(runs, rule=RULE, end=None, holds=()):
    runs = [Run(*r) for r in runs]
    return drive(runs, rule, end if end is not None else runs[-1].start + 100, holds)


def bad_every_minute(state, starts, rule=RULE):
    for start in starts:
        state, _ = begin(state, start, now=start, rule=rule)
        state, _ = observe(state, Observation(start, True), arrived=start + 31, rule=rule)
    return state


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
        state = bad_every_minute(Verdict(), range(0, 840, 60))
        state, _ = begin(state, 899.0, now=899.0, rule=RULE)
        state, events = observe(state, Observation(899.0, False), arrived=899.999, rule=RULE)
        assert ([], Health.OK) == (events, state.health)
        state, events = tick(state, 900.0, RULE)
        assert ([], None) == (events, next_deadline(state, RULE))

    def test_good_arriving_at_the_deadline_prevents_it(self):
        rule = OutageRule.of(interval=5, timeout=8, threshold=5, window=10, recover_after=1)
        runs = [(0, 6, False), (6, 3, False)]  # GOOD run arrives at 9... and one at 10:
        assert [] == feed([*runs, (9, 1, False)], rule, end=10)

    def test_slow_but_successful_is_bad(self):
        runs = [(t, 31, False) for t in range(0, 1000, 60)]
        assert ("Declared", 0, 900) == feed(runs)[0]

    def test_failures_count_at_once(self):
        runs = [(t, 1, True) for t in range(0, 1000, 60)]
        assert ("Declared", 0, 900) == feed(runs)[0]

    def test_in_flight_past_threshold_is_bad_then(self):
        """With window 5 s, a run hanging from t=0 is BAD at 30 s, so OUTAGE at 30 s, not
        when it times out at 35 s."""
        rule = OutageRule.of(interval=60, timeout=35, threshold=30, window=5, recover_after=2)
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
        state = bad_every_minute(Verdict(), range(100, 1000, 60))
        assert Health.BAD == state.health
        assert 1000 == next_deadline(state, RULE)
        state, events = tick(state, 999.999, RULE)
        assert ([], Health.BAD) == (events, state.health)
        state, events = tick(state, 1000, RULE)
        assert ([Declared(100, 1000)], Health.OUTAGE) == (events, state.health)
        assert next_deadline(state, RULE) is None

    def test_no_declaration_without_coverage(self):
        """A lone BAD run long ago does not become an outage: nobody watched since."""
        state = bad_every_minute(Verdict(), [100])
        state, events = tick(state, 5000, RULE)
        assert ([], Health.BAD) == (events, state.health)

    def test_restored_event_fields(self):
        rule = OutageRule.of(interval=1, timeout=2, threshold=1, window=1, recover_after=1)
        state, events = observe(Verdict(), Observation(0, True), arrived=1, rule=rule)
        assert [Declared(0, 1)] == events  # the first run's window ended as it arrived
        state, events = observe(state, Observation(1, True), arrived=2, rule=rule)
        assert [] == events
        state, events = observe(state, Observation(5, False), arrived=5.5, rule=rule)
        assert [Restored(0, 5, 5.5)] == events

    def test_a_long_streak_keeps_a_small_state(self):
        """Ten hours held BAD under maintenance: two runs remembered, not six hundred."""
        state = hold(Verdict(), 40_000)
        state = bad_every_minute(state, range(0, 36_000, 60))
        assert Health.BAD == state.health
        assert [0, 35_940] == [r.start for r in state.runs]


@pytest.mark.parametrize("recover_after", [1, 2, 3])
def test_recover_after_counts(recover_after):
    rule = OutageRule.of(interval=60, timeout=35, threshold=30, window=60,
                         recover_after=recover_after)
    runs = [(0, 31, False), (60, 31, False), (120, 31, False)]
    runs += [(180 + 60 * i, 1, False) for i in range(recover_after)]
    events = feed(runs, rule)
    assert ("Restored", 0, 180) == events[-1][:3]


class TestPastDeadline:
    """Issue 8.1: a deadline that passed without a declaration is never returned again."""

    def test_a_deadline_without_coverage_is_dropped(self):
        """BAD runs at 60 and 120, then nothing: at 960 nobody watched near the moment, so no
        outage and no deadline (it was 960 for ever before, and the daemon spun on it)."""
        state = bad_every_minute(Verdict(), [60, 120])
        assert next_deadline(state, RULE) is None
        state, events = tick(state, 960, RULE)
        assert ([], None) == (events, next_deadline(state, RULE))

    def test_after_a_restart_across_the_deadline(self):
        """The daemon died mid-streak and came back after the deadline: either the streak
        is declared at once (someone watched near the moment) or there is no deadline."""
        covered = bad_every_minute(Verdict(), range(0, 840, 60))
        state, events = tick(resume(covered, RULE), 5000, RULE)
        assert [Declared(0, 5000)] == events
        uncovered = bad_every_minute(Verdict(), range(0, 300, 60))
        state, events = tick(resume(uncovered, RULE), 5000, RULE)
        assert ([], None) == (events, next_deadline(state, RULE))

    def test_runs_in_flight_at_the_restart_are_forgotten(self):
        state = bad_every_minute(Verdict(), range(0, 300, 60))
        state, _ = begin(state, 300, now=300, rule=RULE)
        # no declaration while it runs; the only moment is when it would be given up
        assert 300 + 155 == next_deadline(state, RULE)
        state = resume(state, RULE)
        assert ([0, 240], 240) == ([r.start for r in state.runs], state.last_start)


class TestRunsThatNeverReport:
    """A crashed probe, a lost report, a restart: the run was never seen, and nobody was
    watching (found by an independent attack on the verdict)."""

    def test_crashed_runs_are_no_coverage(self):
        """BAD until 540, then every probe crashes until 840: at 900 nobody watched near the
        deadline, and a run at 905 comes after a gap (it used to declare an outage from 0
        at 905)."""
        state = bad_every_minute(Verdict(), range(0, 600, 60))
        for start in range(600, 900, 60):
            state, _ = begin(state, start, now=start, rule=RULE)
            state, _ = abandon(state, start, now=start + 1, rule=RULE)
        state, events = tick(state, 900, RULE)
        assert ([], None) == (events, next_deadline(state, RULE))
        state, events = begin(state, 905, now=905, rule=RULE)
        assert [] == events
        assert [905] == [r.start for r in state.runs]

    def test_a_gap_left_by_crashes_restarts_the_streak(self):
        """BAD at 0, crashes at 60 and 120, BAD every minute from 180: 180 - 0 > 155 is a
        gap, so the outage starts at 180 (it used to start at 0)."""
        state = bad_every_minute(Verdict(), [0])
        for start in (60, 120):
            state, _ = begin(state, start, now=start, rule=RULE)
            state, _ = abandon(state, start, now=start + 1, rule=RULE)
        events = []
        for start in range(180, 1200, 60):
            deadline = next_deadline(state, RULE)
            if deadline is not None and deadline < start:
                state, more = tick(state, deadline, RULE)
                events += more
            state, more = begin(state, start, now=start, rule=RULE)
            events += more
            state, more = observe(state, Observation(start, True), arrived=start + 31,
                                  rule=RULE)
            events += more
        assert [Declared(180, 1080)] == events

    def test_a_lost_report_is_given_up(self):
        """A run whose report never comes blocks the deadline only until 2 x interval +
        timeout after its start; then the verdict goes on without it (it used to wait for
        ever: no declaration however long the service was BAD)."""
        state = bad_every_minute(Verdict(), range(0, 840, 60))
        state, _ = begin(state, 870, now=870, rule=RULE)  # never heard of again
        state, events = tick(state, 900, RULE)
        assert ([], 870 + 155) == (events, next_deadline(state, RULE))
        state, events = tick(state, 1025, RULE)
        assert [Declared(0, 1025)] == events

    def test_an_outcome_never_reported_as_started_is_not_guessed(self):
        """The scheduler reports every start; an older outcome without one has no known
        place among the runs and changes nothing."""
        rule = OutageRule.of(interval=5, timeout=10, threshold=5, window=30, recover_after=1)
        state = Verdict()
        for start in (0, 10, 20):
            state, _ = begin(state, start, now=start, rule=rule)
            state, _ = observe(state, Observation(start, True), arrived=start + 1, rule=rule)
        state, events = observe(state, Observation(5, False), arrived=22, rule=rule)
        assert ([], 0) == (events, state.streak_start)


class TestMaintenanceHold:
    """Inside a maintenance window BAD runs open nothing; a streak that goes on past the
    window counts from its current end. Times: 09:00 is 0."""

    def test_bad_throughout_and_after(self):
        runs = [(t, 31, False) for t in range(600, 3000, 60)]
        events = feed(runs, holds=((600, 1800),))
        assert [("Declared", 1800, 2700)] == events

    def test_healed_at_the_end(self):
        runs = [(t, 31, False) for t in range(600, 1800, 60)] + [(1800, 1, False),
                                                                (1860, 31, False)]
        assert [] == feed(runs, end=2000, holds=((600, 1800),))

    def test_outage_before_the_window_stays(self):
        """Declared at 900 s, before a window starting at 1000 s: the outage stays."""
        runs = [(t, 31, False) for t in range(0, 1500, 60)]
        assert [("Declared", 0, 900)] == feed(runs, holds=((1000, 5000),))

    def test_cancelled_window_releases_the_hold(self):
        """Issue 8.2: BAD from 09:00, emergency window 09:05-12:00 cancelled at 09:30: the
        outage starts at 09:30 and is declared at 09:45 (it was 12:15)."""
        runs = [(t, 31, False) for t in range(0, 4 * 3600, 60)]
        events = feed(runs, holds=((300, 3 * 3600), (1800, 1800)))
        assert ("Declared", 1800, 2700) == events[0]

    def test_shortened_window_releases_the_hold_at_its_new_end(self):
        """Issue 8.2: the end moved to 09:35 at 09:30: declared at 09:50 (it was 12:15)."""
        runs = [(t, 31, False) for t in range(0, 4 * 3600, 60)]
        events = feed(runs, holds=((300, 3 * 3600), (1800, 2100)))
        assert ("Declared", 2100, 3000) == events[0]

    def test_a_run_straddling_the_end_counts_from_the_end(self):
        """Issue 8.4: window 09:05-09:30, a GOOD run inside it, then a hang from 09:29:50
        known BAD at 09:30:20: declared at 09:45:00, not 09:44:50 (the later runs are on a
        grid where none is undecided at the deadline)."""
        runs = [(1500, 1, False), (1790, 35, True)]
        runs += [(t, 35, True) for t in range(1830, 3600, 60)]
        events = feed(runs, holds=((300, 1800),))
        assert ("Declared", 1800, 2700) == events[0]


class TestUndecidedAtTheDeadline:
    """Issue 8.5: the agreement's rule at the deadline, strictly."""

    def test_a_run_in_flight_that_answers_in_time_means_no_outage(self):
        """BAD every minute from 0; a run from 880 is in flight at 900 and answers GOOD at
        905: there was no outage (it used to be declared at 900)."""
        runs = [(t, 31, False) for t in range(0, 880, 60)] + [(880, 25, False)]
        runs += [(t, 1, False) for t in range(940, 1200, 60)]
        assert [] == feed(runs)

    def test_a_run_in_flight_that_turns_bad_declares_then(self):
        """The same run hangs instead: BAD at 910, and the outage is declared then."""
        runs = [(t, 31, False) for t in range(0, 880, 60)] + [(880, 35, True)]
        assert [("Declared", 0, 910)] == feed(runs, end=1000)


class TestOutOfOrder:
    """Issue 8.6: outcomes placed by their start, not by their arrival."""

    def test_a_hang_finishing_after_a_later_good_run(self):
        """A run from 0 is BAD at 30 (threshold) and ends at 100; a GOOD run from 60 arrived
        at 61 in between. The final sample of the old run does not start a streak again (it
        used to, and an outage from 0 was declared at 120)."""
        rule = OutageRule.of(interval=60, timeout=100, threshold=30, window=120,
                             recover_after=1)
        assert [] == feed([(0, 100, True), (60, 1, False)], rule, end=300)

    def test_an_older_run_known_after_a_newer_one(self):
        """A run from 0 is still in flight when a BAD run from 10 fails at 11; the old one
        fails at 20. The streak starts at 0, the first run by start."""
        rule = OutageRule.of(interval=10, timeout=30, threshold=25, window=15, recover_after=1)
        events = feed([(0, 20, True), (10, 1, True), (20, 1, True)], rule, end=40)
        assert [("Declared", 0, 20)] == events

    def test_a_late_bad_outcome_does_not_break_a_good_run(self):
        """In OUTAGE, GOOD runs from 1000 and 1060 end it even if the BAD outcome of a run
        from 990 arrives after them."""
        rule = OutageRule.of(interval=60, timeout=200, threshold=30, window=60,
                             recover_after=2)
        runs = [(t, 31, False) for t in range(0, 960, 60)] + [(990, 100, True)]
        runs += [(1000, 1, False), (1060, 1, False)]
        events = feed(runs, rule, end=1200)
        assert ("Restored", 0, 1000, 1061) == events[-1]
