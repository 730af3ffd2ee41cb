"""The outage verdict of a target probed from several locations (DESIGN 4.3a), as a pure
function of what each location last published.

Each location runs the evaluator for the target and publishes what it sees, a ``Seen``. The
caller keeps the latest ``Seen`` of each location and calls ``combine`` whenever one of them
changes and at ``next_deadline`` (when a location turns blind by time alone). Times are Unix
seconds; ``now`` is always passed in.

The definitions at a moment ``now``, for a ``QuorumRule``:

- A location is BLIND when it has published nothing, or no run yet, or its latest run started
  ``blind_after`` or more before ``now``: blind from ``last_run + blind_after`` on, the moment
  the timer fires (as the evaluator gives up a run at ``start + coverage_gap``). A run that
  starts and is published at that very moment keeps it reporting, so runs ``blind_after``
  apart leave no blind spell, as runs ``coverage_gap`` apart leave no gap. A blind location
  counts neither as BAD nor as GOOD. Views of locations the rule does not expect are ignored.
- ``reporting``: the expected locations that are not blind. ``need = min(quorum,
  len(reporting))``. The target is DEGRADED while fewer than ``quorum`` locations report (none
  included). ``in_outage``: the reporting locations in OUTAGE.
- Not in OUTAGE: declared at ``now`` when at least one location reports and ``len(in_outage)
  >= need``. The outage starts at the moment from which ``need`` locations have been
  continuously in OUTAGE: the need-th smallest ``outage_start`` among ``in_outage``.
- In OUTAGE since ``start``: restored at ``now`` when at least one location reports and
  ``len(in_outage) < need``. The restore time is the moment from which fewer than ``need`` of
  the reporting locations have been in OUTAGE, as their views tell: a location was in OUTAGE at
  ``u >= start`` when it is in OUTAGE now and ``outage_start <= u``, or when ``u <
  restored_at`` (its latest outage is taken to have lasted since ``start``). That is the latest
  ``restored_at`` in ``(start, now]`` just before which at least ``need`` of them were in
  OUTAGE; when every location in OUTAGE has been since ``start``, it is the ``(need -
  len(in_outage))``-th largest ``restored_at`` after ``start``.
  If there is none (by the views the count never reached ``need`` since ``start``: it fell
  because who reports changed, a location in OUTAGE turning blind or a blind one coming back
  answering normally and raising ``need``), the restore time is the latest ``last_run`` among
  the reporting locations not in OUTAGE, the newest run that saw the service out of OUTAGE,
  bounded to ``[start, now]``.
- With no location reporting nothing is declared, and an outage is never restored: nobody can
  say the service is back.

``Consensus.seen_from`` is the current ``in_outage`` while in OUTAGE (empty otherwise) and
``degraded`` the current moment's; locations are always listed in the order of
``rule.locations``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from outagewatch.core.evaluator import Declared, Event, Health, Restored

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


@dataclass(frozen=True, slots=True)
class Seen:
    """What one location publishes about one target."""

    health: Health  # the location's evaluator health
    last_run: float | None  # start of the latest run it reported (None: none yet)
    outage_start: float | None  # while health is OUTAGE: when the location's outage began
    restored_at: float | None = None  # when its latest outage ended (service back), if ever

    def __post_init__(self) -> None:
        if self.health is Health.OUTAGE and self.outage_start is None:
            raise ValueError("a location in OUTAGE must say when its outage began")


@dataclass(frozen=True, slots=True)
class QuorumRule:
    """Who probes a target, how many must agree, and when a silent location is blind."""

    locations: tuple[str, ...]  # the locations expected to probe this target
    quorum: int  # 1..len(locations)
    blind_after: float  # 2 * interval + timeout of the target

    def __post_init__(self) -> None:
        if not self.locations:
            raise ValueError("quorum: no locations given")
        twice = next((n for i, n in enumerate(self.locations) if n in self.locations[:i]), None)
        if twice is not None:
            raise ValueError(f"quorum: location {twice!r} is listed twice")
        if not 1 <= self.quorum <= len(self.locations):
            raise ValueError(f"quorum must be between 1 and {len(self.locations)} "
                             f"(the number of locations), not {self.quorum}")
        if not self.blind_after > 0:
            raise ValueError(f"blind_after must be positive, not {self.blind_after}")

    @classmethod
    def of(cls, locations: Iterable[str], quorum: int | None = None, *,
           blind_after: float) -> QuorumRule:
        """The rule, checked; ``quorum`` defaults to a majority of the locations."""
        names = tuple(locations)
        return cls(names, len(names) // 2 + 1 if quorum is None else quorum, blind_after)


@dataclass(frozen=True, slots=True)
class Consensus:
    """A target's verdict across locations, between calls."""

    outage_start: float | None = None  # while in OUTAGE: when it began
    seen_from: tuple[str, ...] = ()  # while in OUTAGE: the reporting locations in OUTAGE
    degraded: bool = False  # fewer than quorum locations reporting


def combine(state: Consensus, views: Mapping[str, Seen], *, now: float,
            rule: QuorumRule) -> tuple[Consensus, list[Event]]:
    """Apply the locations' current views at ``now``; return the new state and what happened
    (an outage declared or restored: at most one event)."""
    present = _reporting(views, now, rule)
    out = [name for name in present if views[name].health is Health.OUTAGE]
    need = min(rule.quorum, len(present))
    events: list[Event] = []
    start = state.outage_start
    if present and start is None and len(out) >= need:
        start = _declared_start([views[name] for name in out], need)
        events.append(Declared(start, now))
    elif present and start is not None and len(out) < need:
        back = _restore_time([views[name] for name in present], start, need, now)
        events.append(Restored(start, back, now))
        start = None
    seen_from = tuple(out) if start is not None else ()
    return Consensus(start, seen_from, len(present) < rule.quorum), events


def next_deadline(views: Mapping[str, Seen], *, now: float, rule: QuorumRule) -> float | None:
    """The earliest moment after ``now`` at which a reporting location turns blind if it
    publishes nothing new (``last_run + blind_after``): when ``combine`` must be called again
    even if no view changes. None when no location reports."""
    moments = [_blind_from(views[name], rule) for name in _reporting(views, now, rule)]
    return min(moments, default=None)


def reporting(views: Mapping[str, Seen], *, now: float, rule: QuorumRule) -> tuple[str, ...]:
    """The expected locations that are not blind at ``now``, in the rule's order."""
    return _reporting(views, now, rule)


def describe(views: Mapping[str, Seen], *, now: float, rule: QuorumRule) -> dict[str, str]:
    """Each expected location's view at ``now``: "outage", "bad", "ok" or "blind"."""
    present = _reporting(views, now, rule)
    return {name: str(views[name].health) if name in present else _BLIND
            for name in rule.locations}


def seen_phrase(views: Mapping[str, Seen], *, now: float, rule: QuorumRule) -> str:
    """A short account for mails, e.g. "seen from fra and ams; nyc answered normally"."""
    states = describe(views, now=now, rule=rule)
    parts = []
    for state, one, many in _PHRASES:
        names = [name for name in rule.locations if states[name] == state]
        if names:
            verb = one if len(names) == 1 else many
            parts.append(verb.format(_enumerate(names)))
    return "; ".join(parts)


# -- the rules ----------------------------------------------------------------------------

_BLIND = "blind"

# (state, phrase for one location, phrase for several), in the order they are told
_PHRASES = (
    (str(Health.OUTAGE), "seen from {}", "seen from {}"),
    (str(Health.BAD), "{} saw errors or slow answers", "{} saw errors or slow answers"),
    (str(Health.OK), "{} answered normally", "{} answered normally"),
    (_BLIND, "{} was blind", "{} were blind"),
)


def _blind_from(seen: Seen, rule: QuorumRule) -> float:
    assert seen.last_run is not None
    return seen.last_run + rule.blind_after


def _reporting(views: Mapping[str, Seen], now: float, rule: QuorumRule) -> tuple[str, ...]:
    return tuple(name for name in rule.locations
                 if (seen := views.get(name)) is not None and seen.last_run is not None
                 and now < _blind_from(seen, rule))


def _declared_start(out: list[Seen], need: int) -> float:
    """The moment from which ``need`` of the locations in OUTAGE have been continuously."""
    starts = sorted(seen.outage_start for seen in out if seen.outage_start is not None)
    return starts[need - 1]


def _restore_time(present: list[Seen], start: float, need: int, now: float) -> float:
    """The moment from which fewer than ``need`` of the reporting locations have been in
    OUTAGE, as their views tell, or the latest run out of OUTAGE if it never reached that."""

    def out_just_before(moment: float) -> int:
        return sum(1 for seen in present
                   if (seen.health is Health.OUTAGE and seen.outage_start is not None
                       and seen.outage_start < moment)
                   or (seen.restored_at is not None and seen.restored_at >= moment))

    drops = {seen.restored_at for seen in present
             if seen.restored_at is not None and start < seen.restored_at <= now}
    for moment in sorted(drops, reverse=True):
        if out_just_before(moment) >= need:
            return moment
    latest = max(seen.last_run for seen in present
                 if seen.health is not Health.OUTAGE and seen.last_run is not None)
    return min(max(latest, start), now)


def _enumerate(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} and {names[-1]}"
