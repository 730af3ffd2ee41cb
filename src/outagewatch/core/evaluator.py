"""The outage verdict of one target (DESIGN 4.2-4.4), as a pure fold over observations.

Times are Unix seconds (floats). The caller feeds observations in arrival order through
``observe`` and calls ``tick`` whenever it wakes up; ``next_deadline`` says when it must
wake up next so that an outage is declared at ``streak_start + window`` to the second.

- BAD: a run failed or took longer than ``threshold``. A run still in flight when its
  threshold passes is BAD from then on (an observation with ``final=False``); its final
  sample, with the same start, changes nothing.
- The BAD streak starts at the start of the first BAD run after the last GOOD one.
- OUTAGE once ``now - streak_start >= window`` with no GOOD run arrived since. The outage's
  start is the streak's start.
- Coverage: two consecutive runs starting more than ``2 * interval + timeout`` apart (or the
  last run that long before the declaration moment) mean nobody watched in between; the
  streak starts again at the first BAD run after the gap.
- Recovery: ``recover_after`` consecutive GOOD runs; the restore time is the start of the
  first of them. Before declaration a single GOOD run ends the streak.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class Health(enum.StrEnum):
    OK = "ok"
    BAD = "bad"
    OUTAGE = "outage"


@dataclass(frozen=True, slots=True)
class Window:
    """The parts of a target's rule the verdict needs, in seconds."""

    threshold: float
    window: float
    recover_after: int
    coverage_gap: float  # 2 * interval + timeout

    @classmethod
    def of(cls, *, interval: float, timeout: float, threshold: float, window: float,
           recover_after: int) -> Window:
        return cls(threshold, window, recover_after, 2 * interval + timeout)


@dataclass(frozen=True, slots=True)
class Observation:
    start: float
    bad: bool
    final: bool = True  # False: still in flight, known BAD because its threshold passed


@dataclass(frozen=True, slots=True)
class Verdict:
    """A target's state between observations."""

    health: Health = Health.OK
    streak_start: float | None = None  # first BAD run after the last GOOD one
    last_start: float | None = None  # start of the latest run observed
    outage_start: float | None = None  # while in OUTAGE: when it began (= the streak's start)
    good_run: int = 0  # consecutive GOOD runs while in OUTAGE
    good_run_start: float | None = None


@dataclass(frozen=True, slots=True)
class Declared:
    """The target entered OUTAGE at ``at``; the outage began at ``outage_start``."""

    outage_start: float
    at: float


@dataclass(frozen=True, slots=True)
class Restored:
    """The target left OUTAGE at ``at``; service was back from ``restored_at``."""

    outage_start: float
    restored_at: float
    at: float


Event = Declared | Restored


def observe(
    state: Verdict, obs: Observation, *, arrived: float, rule: Window
) -> tuple[Verdict, list[Event]]:
    """Apply one observation that arrived at ``arrived``; return the new state and what
    happened (an outage declared, a recovery), in order."""
    events: list[Event] = []
    # A deadline strictly before this arrival counts; one at the same moment does not, since
    # the observation has "arrived since" (a GOOD run arriving then prevents the outage).
    state = _declare(state, arrived, rule, events, before=True)
    state = _apply(state, obs, arrived, rule, events)
    state = _declare(state, arrived, rule, events)  # this observation may complete the window
    return state, events


def tick(state: Verdict, now: float, rule: Window) -> tuple[Verdict, list[Event]]:
    """Declare the outage if its moment has come by ``now``."""
    events: list[Event] = []
    return _declare(state, now, rule, events), events


def hold(state: Verdict, until: float) -> Verdict:
    """Maintenance: a BAD streak counts from ``until`` (the window's end) at the earliest, so
    no outage is declared inside the window and one that continues is declared at
    ``until + window``. An outage already declared is left alone (its incident goes on)."""
    if state.health is Health.BAD and state.streak_start is not None \
            and state.streak_start < until:
        return replace(state, streak_start=until)
    return state


def next_deadline(state: Verdict, rule: Window) -> float | None:
    """When ``tick`` may declare an outage next: the daemon's timer for this target."""
    if state.health is Health.BAD and state.streak_start is not None:
        return state.streak_start + rule.window
    return None


def _declare(
    state: Verdict, now: float, rule: Window, events: list[Event], *, before: bool = False
) -> Verdict:
    if state.health is not Health.BAD or state.streak_start is None:
        return state
    due = state.streak_start + rule.window
    if now < due or (before and now == due):
        return state
    if state.last_start is None or due - state.last_start > rule.coverage_gap:
        return state  # nobody watched for too long before the moment; a later run decides
    events.append(Declared(state.streak_start, now))
    return replace(state, health=Health.OUTAGE, outage_start=state.streak_start, good_run=0,
                   good_run_start=None)


def _apply(
    state: Verdict, obs: Observation, arrived: float, rule: Window, events: list[Event]
) -> Verdict:
    gap = state.last_start is not None and obs.start - state.last_start > rule.coverage_gap
    if gap and state.health is Health.BAD:  # nobody watched during the gap: start afresh
        state = replace(state, health=Health.OK, streak_start=None)
    if state.last_start is None or obs.start > state.last_start:
        state = replace(state, last_start=obs.start)
    if state.health is Health.OUTAGE:
        if obs.bad:
            return replace(state, good_run=0, good_run_start=None)
        good_run = state.good_run + 1
        first = obs.start if state.good_run_start is None else state.good_run_start
        if good_run < rule.recover_after:
            return replace(state, good_run=good_run, good_run_start=first)
        assert state.outage_start is not None
        events.append(Restored(state.outage_start, first, arrived))
        return Verdict(last_start=state.last_start)
    if not obs.bad:
        return replace(state, health=Health.OK, streak_start=None)
    if state.streak_start is None:
        return replace(state, health=Health.BAD, streak_start=obs.start)
    return state
