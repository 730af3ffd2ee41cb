"""The quorum across locations against a second-by-second oracle, plus a table test per rule."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import cache, cached_property
from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outagewatch.core.evaluator import Declared, Health, Restored
from outagewatch.core.quorum import (
    Consensus,
    QuorumRule,
    Seen,
    combine,
    describe,
    next_deadline,
    reporting,
    seen_phrase,
)

# -- a location's history on an integer-second timeline ------------------------------------


@dataclass(frozen=True)
class Spell:
    """One outage as a location judged it: from ``start`` to ``end`` (service back), published
    at ``declared`` and at ``restored`` (None: still going)."""

    start: int
    declared: int
    end: int | None = None
    restored: int | None = None


@dataclass(frozen=True)
class History:
    runs: tuple[int, ...]  # run starts, increasing; each published as it starts
    bad: frozenset[int]  # runs that were BAD (the location is BAD while one is its latest)
    spells: tuple[Spell, ...]  # in time order; each published after the one before

    @cached_property
    def changes(self) -> frozenset[int]:
        """The moments its Seen may change."""
        moments = set(self.runs)
        for spell in self.spells:
            moments.add(spell.declared)
            if spell.restored is not None:
                moments.add(spell.restored)
        return frozenset(moments)


def seen_at(history: History, t: int) -> Seen | None:
    """What the location has published by ``t`` (None: nothing yet)."""
    if t < min(history.changes, default=t + 1):
        return None
    index = bisect_right(history.runs, t)
    last = history.runs[index - 1] if index else None
    current = next((s for s in history.spells
                    if s.declared <= t and (s.restored is None or t < s.restored)), None)
    back = max((s.end for s in history.spells
                if s.end is not None and s.restored is not None and s.restored <= t),
               default=None)
    if current is not None:
        return Seen(Health.OUTAGE, last, current.start, back)
    return Seen(Health.BAD if last in history.bad else Health.OK, last, None, back)


def fields(event) -> tuple:
    if isinstance(event, Declared):
        return ("Declared", event.outage_start, event.at)
    return ("Restored", event.outage_start, event.restored_at, event.at)


def drive(rule: QuorumRule, histories: dict[str, History], end: int):
    """The daemon's way: ``combine`` whenever a location's Seen changes (all the changes of a
    moment applied together) and at every ``next_deadline``, never on a grid. Returns the
    events and the state after each call, by moment."""
    moments = sorted({m for h in histories.values() for m in h.changes if m <= end})
    state, out, states = Consensus(), [], {}
    views: dict[str, Seen] = {}
    now: int | None = None

    def call(at: int) -> None:
        nonlocal state
        state, events = combine(state, views, now=at, rule=rule)
        out.extend(events)
        again, more = combine(state, views, now=at, rule=rule)
        assert (again, more) == (state, []), "a second call at the same moment acted"
        states[at] = state

    for at in [*moments, end + 1]:
        if now is not None:
            deadline = next_deadline(views, now=now, rule=rule)
            while deadline is not None and deadline < at:
                assert deadline > now, "a deadline that is not in the future"
                call(int(deadline))
                now = int(deadline)
                deadline = next_deadline(views, now=now, rule=rule)
        if at > end:
            break
        views = {name: seen for name, h in histories.items()
                 if (seen := seen_at(h, at)) is not None}
        call(at)
        now = at
    return [fields(e) for e in out], states


# -- the oracle ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A location's published view at one second, rebuilt from its history."""

    last: int | None
    outage: int | None  # its current outage's start, while it says OUTAGE
    back: int | None  # when its latest outage ended, once it said so


def table(history: History, end: int) -> list[Row | None]:
    """Second by second, what the location has published (None: nothing yet)."""
    runs = set(history.runs)
    declared = {s.declared: s for s in history.spells}
    restored = {s.restored: s for s in history.spells if s.restored is not None}
    rows: list[Row | None] = []
    last = outage = back = None
    spoke = False
    for t in range(end + 1):
        if t in runs:
            last, spoke = t, True
        if t in restored:  # before a declaration at the same second: that one is newer
            outage, back, spoke = None, restored[t].end, True
        if t in declared:
            outage, spoke = declared[t].start, True
        rows.append(Row(last, outage, back) if spoke else None)
    return rows


def oracle(rule: QuorumRule, histories: dict[str, History], end: int):
    """The definitions, re-evaluated from scratch at every second: who is blind, who is in
    OUTAGE; for a declaration, scan back for the moment from which ``need`` locations were
    continuously in OUTAGE; for a restore, scan back for the moment the count fell below
    ``need`` (as the views tell: in OUTAGE from its start, or before its latest restore)."""
    tables = {name: table(h, end) for name, h in histories.items() if name in rule.locations}
    out_events: list[tuple] = []
    states: list[Consensus] = []
    start: int | None = None
    for t in range(end + 1):
        rows = {name: row for name, column in tables.items() if (row := column[t]) is not None}
        watching = [name for name in rule.locations if name in rows
                    and (last := rows[name].last) is not None and t - last < rule.blind_after]
        down = [name for name in watching if rows[name].outage is not None]
        need = min(rule.quorum, len(watching))

        def was_out(name: str, u: int, rows=rows) -> bool:
            row = rows[name]
            return ((row.outage is not None and row.outage <= u)
                    or (row.back is not None and u < row.back))

        if watching and start is None and len(down) >= need:
            still, u = set(down), t
            while len(still := {name for name in still if was_out(name, u)}) >= need:
                start, u = u, u - 1
            out_events.append(("Declared", start, t))
        elif watching and start is not None and len(down) < need:
            back = None
            for u in range(t, start - 1, -1):
                if sum(was_out(name, u) for name in watching) >= need:
                    back = u + 1
                    break
            if back is None:  # who reports changed: the newest run out of OUTAGE
                newest = max(last for name in watching if name not in down
                             if (last := rows[name].last) is not None)
                back = max(start, min(t, newest))
            out_events.append(("Restored", start, back, t))
            start = None
        states.append(Consensus(start, tuple(down) if start is not None else (),
                                len(watching) < rule.quorum))
    return out_events, states


# -- the property ----------------------------------------------------------------------------

NAMES = ("fra", "ams", "nyc", "sin")
HORIZON = 90
# An outage: (declared after its start, its length or None if still going, its restore
# published after its end, the pause before the next one), drawn as one choice. Short ones
# are frequent: locations flap.
SPELLS = st.sampled_from(list(product(
    [0, 0, 1, 2, 3, 5, 8], [None] * 4 + [1, 1, 2, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30],
    [0, 0, 1, 2, 3, 5, 8, 20, 40], [1, 1, 2, 3, 5, 8, 12, 15],
)))
# The same with restores often told late: a location back early says so after others.
LATE_SPELLS = st.sampled_from(list(product(
    [0, 1, 2, 5], [None] * 2 + [1, 2, 3, 5, 8, 12, 20], [0, 1, 10, 20, 30, 40], [1, 3, 8, 15],
)))


@cache
def segments(blind_after: int) -> st.SearchStrategy[tuple[int, int, int]]:
    """Regular runs: (step, how many, the gap after them), drawn as one choice each. Steps up
    to ``blind_after`` (that one leaving no blind spot), gaps around it or longer."""
    steps = sorted({1, 2, 3, blind_after // 2 or 1, blind_after})
    gaps = [blind_after - 1, blind_after, blind_after + 1, 2 * blind_after, 30]
    return st.sampled_from(list(product(steps, range(1, 31), gaps)))


@st.composite
def histories(draw, blind_after: int, near: int, *, steady: bool = False) -> History:
    """Runs in regular spells with gaps around ``blind_after`` (``steady``: every second,
    never blind); outages that flap, mostly beginning near ``near`` so that locations agree
    now and then."""
    runs, t = [], 0 if steady else draw(st.sampled_from([0, 0, 0, 3, 20, 50]))
    if steady:
        runs, t = list(range(HORIZON + 1)), HORIZON + 1
    while t <= HORIZON:
        step, count, gap = draw(segments(blind_after))
        runs += range(t, min(t + step * count, HORIZON + 1), step)
        t = runs[-1] + gap
    worse = draw(st.integers(0, HORIZON))
    bad = frozenset(run for run in runs if worse <= run < worse + draw(st.integers(0, 20)))
    spells: list[Spell] = []
    t = near + draw(st.integers(0, 8)) if draw(st.integers(0, 3)) else draw(st.integers(0, 60))
    published = 0
    for _ in range(draw(st.integers(0, 4))):
        late, length, slow, pause = draw(LATE_SPELLS if steady else SPELLS)
        declared = max(t + late, published)
        if declared > HORIZON:
            break
        if length is None:
            spells.append(Spell(t, declared))
            break
        published = max(t + length + slow, declared + 1)
        spells.append(Spell(t, declared, t + length, published))
        t += length + pause
    return History(tuple(runs), bad, tuple(spells))


@st.composite
def scenarios(draw, *, steady: bool = False):
    count = draw(st.sampled_from([3, 4] if steady else [1, 2, 2, 3, 3, 3, 4, 4]))
    blind_after = draw(st.integers(2, 12))
    rule = QuorumRule.of(NAMES[:count], draw(st.integers(1, count)), blind_after=blind_after)
    near = draw(st.integers(0, 40))
    located = {name: draw(histories(blind_after, near, steady=steady))
               for name in rule.locations
               if steady or draw(st.integers(0, 7))}  # now and then one never publishes
    if draw(st.integers(0, 4)) == 0:  # a location the rule does not expect
        located["zzz"] = draw(histories(blind_after, near))
    end = max((m for h in located.values() for m in h.changes), default=0) + blind_after + 2
    return rule, located, end


@settings(max_examples=700, deadline=None)
@given(scenarios())
def test_matches_oracle(scenario):
    """Driven by changes and deadlines only, the events, with their times, and the state at
    every call are those the definitions give second by second."""
    rule, located, end = scenario
    expected, by_second = oracle(rule, located, end)
    events, states = drive(rule, located, end)
    assert expected == events
    assert {at: by_second[at] for at in states} == states


@settings(max_examples=300, deadline=None)
@given(scenarios(steady=True))
def test_matches_oracle_with_restores_told_late(scenario):
    """Three or four locations never blind, whose restores are often told long after the
    service came back, and out of order: the restore time is still when the count fell."""
    rule, located, end = scenario
    expected, by_second = oracle(rule, located, end)
    events, states = drive(rule, located, end)
    assert expected == events
    assert {at: by_second[at] for at in states} == states


# -- the rules, by example ---------------------------------------------------------------------

RULE = QuorumRule.of(("fra", "ams", "nyc"), blind_after=155)  # quorum 2


def ok(last_run, restored_at=None):
    return Seen(Health.OK, last_run, None, restored_at)


def bad(last_run, restored_at=None):
    return Seen(Health.BAD, last_run, None, restored_at)


def out(last_run, since, restored_at=None):
    return Seen(Health.OUTAGE, last_run, since, restored_at)


def declared(views, now, rule=RULE):
    """The state after an outage declared from ``views`` at ``now``."""
    state, events = combine(Consensus(), views, now=now, rule=rule)
    assert [Declared] == [type(e) for e in events]
    return state


class TestDeclaration:
    def test_one_location_of_three_is_not_enough(self):
        views = {"fra": out(1000, 100), "ams": ok(1000), "nyc": bad(1000)}
        assert (Consensus(), []) == combine(Consensus(), views, now=1000, rule=RULE)

    def test_two_declare_from_the_second_smallest_start(self):
        """fra in OUTAGE since 100, ams since 300: two were so from 300."""
        views = {"fra": out(1000, 100), "ams": out(1000, 300), "nyc": ok(1000)}
        state, events = combine(Consensus(), views, now=1000, rule=RULE)
        assert [Declared(300, 1000)] == events
        assert Consensus(300, ("fra", "ams"), degraded=False) == state

    def test_the_need_th_smallest_of_three(self):
        views = {"nyc": out(1000, 200), "ams": out(1000, 300), "fra": out(1000, 100)}
        state, events = combine(Consensus(), views, now=1000, rule=RULE)
        assert [Declared(200, 1000)] == events
        assert ("fra", "ams", "nyc") == state.seen_from  # the rule's order, not the views'

    def test_seen_from_follows_the_outage(self):
        state = declared({"fra": out(1000, 100), "ams": out(1000, 300), "nyc": ok(1000)}, 1000)
        views = {"fra": out(1060, 100), "ams": out(1060, 300), "nyc": out(1060, 1050)}
        state, events = combine(state, views, now=1060, rule=RULE)
        assert ([], ("fra", "ams", "nyc")) == (events, state.seen_from)

    def test_locations_not_expected_are_ignored(self):
        views = {"fra": out(1000, 100), "ams": ok(1000), "zzz": out(1000, 50)}
        assert (Consensus(), []) == combine(Consensus(), views, now=1000, rule=RULE)


class TestRestore:
    def test_the_restore_that_dropped_the_count_below_quorum(self):
        """All three in OUTAGE from 100. fra is back from 1100 (said at 1130): ams and nyc
        still hold it. ams says at 1140 it was back from 1090: from 1100 only nyc was in
        OUTAGE, so the service is back from 1100, not 1090."""
        state = declared({name: out(1000, 100) for name in RULE.locations}, 1000)
        views = {"fra": ok(1120, 1100), "ams": out(1120, 100), "nyc": out(1120, 100)}
        state, events = combine(state, views, now=1130, rule=RULE)
        assert ([], ("ams", "nyc")) == (events, state.seen_from)
        views["ams"] = ok(1140, 1090)
        state, events = combine(state, views, now=1140, rule=RULE)
        assert [Restored(100, 1100, 1140)] == events
        assert Consensus() == state

    def test_restores_from_an_earlier_outage_do_not_count(self):
        """nyc's restore at 50 was before this outage began: fra's at 1100 is the one."""
        state = declared({"fra": out(1000, 100), "ams": out(1000, 100), "nyc": ok(1000, 50)},
                         1000)
        views = {"fra": ok(1120, 1100), "ams": out(1120, 100), "nyc": ok(1120, 50)}
        assert [Restored(100, 1100, 1130)] == combine(state, views, now=1130, rule=RULE)[1]

    def test_a_location_that_joined_late_does_not_move_the_restore(self):
        """fra and ams in OUTAGE from 0; nyc joins from 25 (said at 28); fra is back from
        20 (said at 30), ams from 10 (said at 100). By the views two were in OUTAGE until 10,
        one from 10 to 20, none from 20 to 25: back from 10 (not 20, the latest restore)."""
        state = declared({"fra": out(15, 0), "ams": out(15, 0), "nyc": ok(15)}, 15)
        views = {"fra": out(28, 0), "ams": out(28, 0), "nyc": out(28, 25)}
        state, events = combine(state, views, now=28, rule=RULE)
        views["fra"] = ok(30, 20)
        state, events = combine(state, views, now=30, rule=RULE)
        assert ([], ("ams", "nyc")) == (events, state.seen_from)
        views["ams"] = ok(100, 10)
        assert [Restored(0, 10, 100)] == combine(state, views, now=100, rule=RULE)[1]

    def test_a_blind_location_back_answering_normally(self):
        """Quorum 3 of 3: nyc blind, fra and ams declare it alone (degraded). nyc comes back
        answering normally: need is 3 again, and no restore explains the drop; the service
        is back from nyc's run (the newest run out of OUTAGE)."""
        rule = QuorumRule.of(RULE.locations, 3, blind_after=155)
        views = {"fra": out(1000, 100), "ams": out(1000, 200), "nyc": ok(500)}
        state = declared(views, 1000, rule)
        assert Consensus(200, ("fra", "ams"), degraded=True) == state
        views["nyc"] = ok(1010)
        state, events = combine(state, views, now=1010, rule=rule)
        assert ([Restored(200, 1010, 1010)], Consensus()) == (events, state)

    def test_a_location_in_outage_turning_blind(self):
        """fra and ams hold the outage; ams goes silent after its run at 1000 and is blind at
        1155: fra alone is fewer than the quorum of the two reporting. No restore explains
        it: the service is back from nyc's latest run."""
        views = {"fra": out(1000, 100), "ams": out(1000, 100), "nyc": ok(1000)}
        state = declared(views, 1000)
        views = {"fra": out(1150, 100), "ams": out(1000, 100), "nyc": ok(1090)}
        assert 1155 == next_deadline(views, now=1150, rule=RULE)
        assert (state, []) == combine(state, views, now=1154.999, rule=RULE)
        state, events = combine(state, views, now=1155, rule=RULE)
        assert [Restored(100, 1090, 1155)] == events

    def test_the_corner_restore_is_not_before_the_outage(self):
        """The newest run out of OUTAGE came before the outage began: back from its start."""
        rule = QuorumRule.of(RULE.locations, 3, blind_after=155)
        state = declared({"fra": out(1000, 900), "ams": out(1000, 950)}, 1000, rule)
        views = {"fra": out(1010, 900), "ams": out(1010, 950), "nyc": ok(880)}
        assert [Restored(950, 950, 1010)] == combine(state, views, now=1010, rule=rule)[1]


class TestBlindness:
    def test_blind_locations_lower_need(self):
        """ams silent since 700 and nyc never heard of: at 1000 fra alone reports, and its
        OUTAGE is the verdict, flagged degraded."""
        views = {"fra": out(1000, 500), "ams": ok(700)}
        assert ("fra",) == reporting(views, now=1000, rule=RULE)
        state, events = combine(Consensus(), views, now=1000, rule=RULE)
        assert [Declared(500, 1000)] == events
        assert Consensus(500, ("fra",), degraded=True) == state

    def test_degraded_without_an_outage(self):
        views = {"fra": ok(1000), "ams": ok(700), "nyc": Seen(Health.OK, None, None)}
        assert (Consensus(degraded=True), []) == combine(Consensus(), views, now=1000,
                                                         rule=RULE)

    def test_all_blind_declares_nothing(self):
        views = {"fra": out(100, 50), "ams": out(100, 50), "nyc": out(100, 50)}
        state, events = combine(Consensus(), views, now=1000, rule=RULE)
        assert ([], Consensus(degraded=True)) == (events, state)
        assert next_deadline(views, now=1000, rule=RULE) is None

    def test_all_blind_restores_nothing(self):
        state = declared({"fra": out(1000, 100), "ams": out(1000, 100), "nyc": ok(1000)}, 1000)
        views = {"fra": ok(1000, 1000), "ams": out(1000, 100), "nyc": ok(1000)}
        state, events = combine(state, views, now=2000, rule=RULE)
        assert ([], Consensus(100, (), degraded=True)) == (events, state)
        views["nyc"] = ok(2010)  # back, alone: never in OUTAGE, so back from its run
        assert [Restored(100, 2010, 2010)] == combine(state, views, now=2010, rule=RULE)[1]

    def test_next_deadline_is_the_moment_of_blindness(self):
        """fra in OUTAGE, ams answering normally until it falls silent after 990, nyc blind:
        no quorum of the two reporting; at 990 + 155 ams is blind and fra's OUTAGE, alone,
        is the verdict. A moment before, nothing."""
        views = {"fra": out(1100, 500), "ams": ok(990), "nyc": ok(100)}
        assert 1145 == next_deadline(views, now=1100, rule=RULE)
        state, events = combine(Consensus(), views, now=1144.999, rule=RULE)
        assert ([], ("fra", "ams")) == (events, reporting(views, now=1144.999, rule=RULE))
        state, events = combine(state, views, now=1145, rule=RULE)
        assert [Declared(500, 1145)] == events
        assert (True, ("fra",)) == (state.degraded, reporting(views, now=1145, rule=RULE))
        assert 1100 + 155 == next_deadline(views, now=1145, rule=RULE)

    def test_a_run_exactly_blind_after_later_keeps_it_reporting(self):
        views = {"fra": ok(1000)}
        assert 1155 == next_deadline(views, now=1000, rule=RULE)
        assert () == reporting(views, now=1155, rule=RULE)
        assert ("fra",) == reporting({"fra": ok(1155)}, now=1155, rule=RULE)


class TestWords:
    def test_describe(self):
        views = {"fra": out(1000, 100), "ams": bad(700), "nyc": ok(1000), "zzz": ok(1000)}
        assert {"fra": "outage", "ams": "blind", "nyc": "ok"} == describe(views, now=1000,
                                                                          rule=RULE)
        views["ams"] = bad(990)
        assert ["fra", "ams", "nyc"] == list(describe(views, now=1000, rule=RULE))
        assert "bad" == describe(views, now=1000, rule=RULE)["ams"]

    def test_seen_from_two_one_answering_normally(self):
        views = {"nyc": ok(1000), "ams": out(1000, 100), "fra": out(1000, 100)}
        assert "seen from fra and ams; nyc answered normally" == seen_phrase(views, now=1000,
                                                                             rule=RULE)

    def test_seen_from_one_the_other_blind(self):
        rule = QuorumRule.of(("fra", "ams"), blind_after=155)
        views = {"fra": out(1000, 100)}
        assert "seen from fra; ams was blind" == seen_phrase(views, now=1000, rule=rule)

    @pytest.mark.parametrize(("views", "phrase"), [
        ({"fra": out(1000, 1), "ams": out(1000, 1), "nyc": out(1000, 1)},
         "seen from fra, ams and nyc"),
        ({"fra": bad(1000), "ams": ok(1000), "nyc": ok(1000)},
         "fra saw errors or slow answers; ams and nyc answered normally"),
        ({"ams": ok(1000)}, "ams answered normally; fra and nyc were blind"),
        ({}, "fra, ams and nyc were blind"),
    ])
    def test_seen_phrase(self, views, phrase):
        assert phrase == seen_phrase(views, now=1000, rule=RULE)


class TestRule:
    @pytest.mark.parametrize(("count", "majority"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
    def test_quorum_defaults_to_a_majority(self, count, majority):
        rule = QuorumRule.of([f"l{i}" for i in range(count)], blind_after=155)
        assert (count, majority) == (len(rule.locations), rule.quorum)

    @pytest.mark.parametrize(("locations", "quorum", "blind_after", "message"), [
        ((), None, 155, "no locations"),
        (("fra", "ams", "fra"), None, 155, "'fra' is listed twice"),
        (("fra", "ams"), 0, 155, "between 1 and 2"),
        (("fra", "ams"), 3, 155, "between 1 and 2"),
        (("fra",), 1, 0, "blind_after must be positive"),
    ])
    def test_refused(self, locations, quorum, blind_after, message):
        with pytest.raises(ValueError, match=message) as info:
            QuorumRule.of(locations, quorum, blind_after=blind_after)
        assert "\n" not in str(info.value)

    def test_an_outage_without_a_start_is_refused(self):
        with pytest.raises(ValueError, match="when its outage began"):
            Seen(Health.OUTAGE, 1000, None)
