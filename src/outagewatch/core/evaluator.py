"""The outage verdict of one target (DESIGN 4.2-4.4), as a pure fold over its runs.

Times are Unix seconds (floats). The caller reports every run when it starts (``begin``) and
when its outcome becomes known (``observe``: a final sample, or the moment a run still in
flight passes its threshold), and calls ``tick`` whenever it wakes up; ``next_deadline`` says
when it must wake up next so that an outage is declared at ``streak start + window`` to the
second.

The definitions, in start order (a run that becomes known late takes its place by its start):

- A run is BAD once it failed or passed ``threshold`` (even still in flight), GOOD once it
  succeeded within ``threshold``, and *undecided* in between.
- A *streak* is a maximal sequence of consecutive runs with no GOOD run among them and no
  coverage gap between them (two runs starting more than ``2 * interval + timeout`` apart: the
  daemon was down, nobody watched). Its start is its first run's start, or the maintenance
  floor if that is later (``hold``: a streak counts from the window's current end at the
  earliest).
- OUTAGE from ``start`` once every run that started in ``[first run, start + window)`` is
  known BAD, that interval holds no coverage gap, and the streak's last run started no more
  than ``2 * interval + timeout`` before ``start + window``. A run still undecided at the
  deadline is waited for (at most ``threshold``); if it turns out GOOD there was no outage.
- Recovery: ``recover_after`` consecutive GOOD runs (in start order) after the outage began;
  the restore time is the start of the first of them.

The state keeps the runs of the current streak only, pruned of what can no longer matter, so
it stays a few entries long however long a streak lasts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class Health(enum.StrEnum):
    OK = "ok"
    BAD = "bad"
    OUTAGE = "outage"


class Status(enum.StrEnum):
    PENDING = "pending"  # started, outcome not known yet
    BAD = "bad"
    GOOD = "good"


@dataclass(frozen=True, slots=True)
class OutageRule:
    """The parts of a target's rule the verdict needs, in seconds."""

    threshold: float
    window: float
    recover_after: int
    coverage_gap: float  # 2 * interval + timeout

    @classmethod
    def of(cls, *, interval: float, timeout: float, threshold: float, window: float,
           recover_after: int) -> OutageRule:
        return cls(threshold, window, recover_after, 2 * interval + timeout)


@dataclass(frozen=True, slots=True)
class Observation:
    """A run's outcome: its final sample, or BAD because it is in flight past its threshold."""

    start: float
    bad: bool


@dataclass(frozen=True, slots=True)
class Run:
    start: float
    status: Status
    after_gap: bool = False  # a coverage gap lies between this run and the one before


@dataclass(frozen=True, slots=True)
class Verdict:
    """A target's state between observations."""

    runs: tuple[Run, ...] = ()  # in start order; only what can still matter
    last_start: float | None = None  # the latest run started
    horizon: float | None = None  # runs started at or before this are settled and forgotten
    outage_start: float | None = None  # while in OUTAGE: when it began
    floor: float | None = None  # maintenance: a streak counts from here at the earliest

    @property
    def health(self) -> Health:
        if self.outage_start is not None:
            return Health.OUTAGE
        if any(r.status is Status.BAD for r in _current(self.runs)):
            return Health.BAD
        return Health.OK

    @property
    def streak_start(self) -> float | None:
        """While BAD: when the current streak counts from, as far as is known now (its first
        known BAD run, or the maintenance floor if later)."""
        if self.health is not Health.BAD:
            return None
        first = next(r for r in _current(self.runs) if r.status is Status.BAD)
        return _counted_from(first.start, self.floor)


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
Step = tuple[Verdict, list[Event]]


def begin(state: Verdict, start: float, *, now: float, rule: OutageRule) -> Step:
    """A run started at ``start``; its outcome follows through ``observe``."""
    events: list[Event] = []
    state = _settle(state, now, rule, events, before=True)
    state = _place(state, Run(start, Status.PENDING), rule)
    return _settle(state, now, rule, events), events


def observe(state: Verdict, obs: Observation, *, arrived: float, rule: OutageRule) -> Step:
    """Apply an outcome that became known at ``arrived``; return the new state and what
    happened (an outage declared, a recovery), in order."""
    events: list[Event] = []
    # A deadline strictly before this arrival counts; one at the same moment does not, since
    # the observation has "arrived since" (a GOOD run arriving then prevents the outage).
    state = _settle(state, arrived, rule, events, before=True)
    status = Status.BAD if obs.bad else Status.GOOD
    state = _place(state, Run(obs.start, status), rule)
    return _settle(state, arrived, rule, events), events


def tick(state: Verdict, now: float, rule: OutageRule) -> Step:
    """Declare the outage if its moment has come by ``now``."""
    events: list[Event] = []
    return _settle(state, now, rule, events), events


def hold(state: Verdict, floor: float | None) -> Verdict:
    """Maintenance: a streak counts from ``floor`` at the earliest (the current end of the
    windows that cover the target, the moment a window was cancelled, or None). Setting it
    again moves it either way, so a window cancelled or shortened releases its hold. An
    outage already declared is left alone (its incident goes on)."""
    return replace(state, floor=floor)


def abandon(state: Verdict, start: float, *, now: float, rule: OutageRule) -> Step:
    """The run from ``start`` will never report (it crashed): the monitor did not see the
    service then, which is neither BAD nor GOOD, nor anybody watching; forget the run."""
    events: list[Event] = []
    state = _unseen(state, lambda run: run.start == start, rule)
    return _settle(state, now, rule, events), events


def resume(state: Verdict, rule: OutageRule) -> Verdict:
    """After a restart: runs that were in flight then will never report; forget them."""
    return _unseen(state, lambda _run: True, rule)


def next_deadline(state: Verdict, rule: OutageRule) -> float | None:
    """When ``tick`` will act, if nothing else happens first: declare an outage, or give up
    on a run that never reported (``2 * interval + timeout`` after its start: the scheduler's
    report was lost). The daemon's timer for this target. Never a moment ``tick`` has passed
    without acting: while a run is undecided, or nobody watched near the moment, there is no
    declaration deadline (an observation decides)."""
    moments = [r.start + rule.coverage_gap for r in state.runs if r.status is Status.PENDING]
    if state.outage_start is None:
        for first, end in _segments(state.runs):
            due = _ready(state.runs, first, end, state.floor, rule)
            if due is not None:
                moments.append(due)
                break
    return min(moments, default=None)


# -- the rules ----------------------------------------------------------------------------


def _counted_from(first: float, floor: float | None) -> float:
    return first if floor is None else max(first, floor)


def _ends_streak(run: Run) -> bool:
    return run.after_gap or run.status is Status.GOOD


def _current(runs: tuple[Run, ...]) -> tuple[Run, ...]:
    """The runs of the streak in progress: after the last GOOD run or coverage gap."""
    for index in range(len(runs) - 1, -1, -1):
        if runs[index].status is Status.GOOD:
            return runs[index + 1:]
        if runs[index].after_gap:
            return runs[index:]
    return runs


def _segments(runs: tuple[Run, ...]) -> list[tuple[int, int]]:
    """Each streak as ``(first, end)`` indexes into ``runs``: its runs are ``first..end-1``,
    and ``runs[end]``, if there is one, is the run that ended it (a GOOD run, or the first
    run after a coverage gap)."""
    segments: list[tuple[int, int]] = []
    first: int | None = None
    for index, run in enumerate(runs):
        if _ends_streak(run) and first is not None:
            segments.append((first, index))
            first = None
        if first is None and run.status is not Status.GOOD:
            first = index
    if first is not None:
        segments.append((first, len(runs)))
    return segments


def _ready(runs: tuple[Run, ...], first: int, end: int, floor: float | None,
           rule: OutageRule) -> float | None:
    """The moment the streak ``runs[first:end]`` becomes an outage by time alone; None if it
    cannot (yet): an undecided run before that moment, a GOOD run or a gap before it, or
    nobody watching near it."""
    due = _counted_from(runs[first].start, floor) + rule.window
    for run in runs[first:end]:
        if run.start < due and run.status is not Status.BAD:
            return None
    if end < len(runs) and runs[end].start < due:
        return None  # the service answered, or nobody watched, before the moment
    if due - runs[end - 1].start > rule.coverage_gap:
        return None  # nobody watched for too long before the moment
    return due


def _settle(state: Verdict, now: float, rule: OutageRule, events: list[Event], *,
            before: bool = False) -> Verdict:
    """Declare and restore until nothing more happens at ``now`` (``before``: only what was
    due strictly before ``now``)."""
    state = _unseen(state, lambda run: run.start + rule.coverage_gap <= now, rule)
    while True:
        step = (_declare(state, now, rule, before=before) if state.outage_start is None
                else _restore(state, now, rule))
        if step is None:
            return _compact(state)
        state, event = step
        events.append(event)


def _declare(state: Verdict, now: float, rule: OutageRule, *,
             before: bool) -> tuple[Verdict, Event] | None:
    for first, end in _segments(state.runs):
        due = _ready(state.runs, first, end, state.floor, rule)
        if due is None or now < due or (before and now == due):
            continue
        start = due - rule.window
        return replace(_drop(state, first), outage_start=start), Declared(start, now)
    return None


def _restore(state: Verdict, now: float, rule: OutageRule) -> tuple[Verdict, Event] | None:
    assert state.outage_start is not None
    need, runs = rule.recover_after, state.runs
    for index in range(len(runs) - need + 1):
        if all(r.status is Status.GOOD for r in runs[index:index + need]):
            event = Restored(state.outage_start, runs[index].start, now)
            return replace(_drop(state, index), outage_start=None), event
    return None


def _drop(state: Verdict, count: int) -> Verdict:
    """Forget the first ``count`` runs: outcomes that arrive for them later are ignored."""
    if count == 0:
        return state
    last = state.runs[count - 1].start
    horizon = last if state.horizon is None else max(state.horizon, last)
    return replace(state, runs=state.runs[count:], horizon=horizon)


def _place(state: Verdict, run: Run, rule: OutageRule) -> Verdict:
    """Put a started run, or a run's outcome, in its place by start."""
    runs = list(state.runs)
    for index, known in enumerate(runs):
        if known.start == run.start:
            if known.status is Status.PENDING and run.status is not Status.PENDING:
                runs[index] = replace(known, status=run.status)
                return replace(state, runs=tuple(runs))
            return state  # a repeat, or the final sample of a run already known BAD
    if state.horizon is not None and run.start <= state.horizon:
        return state  # settled already
    if state.last_start is None or run.start > state.last_start:
        gap = state.last_start is not None and run.start - state.last_start > rule.coverage_gap
        runs.append(replace(run, after_gap=gap))
        return replace(state, runs=tuple(runs), last_start=run.start)
    # Older than the latest start and not held: the final sample of a run known BAD since
    # its threshold passed (dropped as saying nothing new), a run already forgotten, or one
    # never reported as started. The scheduler reports every run when it starts; without
    # that, its place among the runs is not known, so it is not guessed.
    return state


def _unseen(state: Verdict, which: Callable[[Run], bool], rule: OutageRule) -> Verdict:
    """Forget undecided runs that will never report (``which`` of them): nobody saw the
    service then, and nobody was watching. The run after each one is judged again against
    the run before it for a coverage gap, and so is the next run to start."""
    kept: list[Run] = []
    dropped = False
    for run in state.runs:
        if run.status is Status.PENDING and which(run):
            dropped = True
            continue
        if dropped:
            previous = kept[-1].start if kept else state.horizon
            gap = previous is not None and run.start - previous > rule.coverage_gap
            kept.append(replace(run, after_gap=gap))
            dropped = False
            continue
        kept.append(run)
    if len(kept) == len(state.runs):
        return state
    last = kept[-1].start if kept else state.horizon
    return replace(state, runs=tuple(kept), last_start=last)


def _compact(state: Verdict) -> Verdict:
    """Forget what can no longer change a verdict: streaks that ended with every outcome
    known, and BAD runs in the middle of known BAD runs of one streak."""
    runs = state.runs
    pending = next((i for i, r in enumerate(runs) if r.status is Status.PENDING), len(runs))
    if state.outage_start is not None:
        # A recovery needs consecutive GOOD runs: nothing up to the last known BAD run
        # before the first undecided one can be part of one.
        cut = max((i + 1 for i in range(pending) if runs[i].status is Status.BAD), default=0)
    else:
        # Keep from the streak that holds the first undecided run (or the current streak).
        cut = 0
        for index, run in enumerate(runs[:pending + 1]):
            if run.status is Status.GOOD:
                cut = index + 1
            elif run.after_gap:
                cut = index
    state = _drop(state, cut)
    runs = state.runs
    kept = tuple(run for i, run in enumerate(runs) if not _redundant(runs, i))
    return state if len(kept) == len(runs) else replace(state, runs=kept)


def _redundant(runs: tuple[Run, ...], i: int) -> bool:
    """A known BAD run between two known BAD runs of the same streak says nothing new: only
    a streak's first and last runs, its undecided runs and their neighbours matter."""
    if i == 0 or i == len(runs) - 1 or runs[i].after_gap or runs[i + 1].after_gap:
        return False
    return all(runs[j].status is Status.BAD for j in (i - 1, i, i + 1))
