"""Availability: periods in a platform's zone, the interval algebra, the figures of a service
and a platform against a minute-by-minute oracle, and incident statistics."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outagewatch.core.availability import (
    Figures,
    IncidentSpan,
    Ledger,
    Period,
    custom_period,
    days,
    difference,
    figures,
    incident_stats,
    intersection,
    measure,
    month_of,
    parse_period,
    platform_figures,
    union,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
H = 3600.0


def at(text: str, zone=BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


# --- the oracle: every minute of the period classified by the written rules ------------------

def _marks(intervals, lo: float, n: int) -> bytearray:
    """One byte per minute of [lo, lo + 60 n): 1 where an interval holds that minute (intervals
    lie on whole minutes, so a minute is wholly in or wholly out)."""
    marks = bytearray(n)
    for start, end in intervals:
        assert (start - lo) % 60 == 0
        assert (end - lo) % 60 == 0
        first, after = max(0, int(start - lo) // 60), min(n, int(end - lo) // 60)
        for k in range(first, after):
            marks[k] = 1
    return marks


MAINT, BLIND, UNPLANNED, PLANNED = 1, 2, 4, 8  # a minute's flags for one service


def _minutes(ledger: Ledger, lo: float, n: int) -> list[int]:
    """Per minute, the flags of one service."""
    flags = []
    for m, o, f, c in zip(_marks(ledger.maintenance, lo, n), _marks(ledger.outages, lo, n),
                          _marks(ledger.failing, lo, n), _marks(ledger.covered, lo, n),
                          strict=True):
        unplanned = o and not m
        blind = not c and not m and not unplanned
        planned = (f or o) and m
        flags.append(MAINT * bool(m) | BLIND * blind | UNPLANNED * bool(unplanned)
                     | PLANNED * bool(planned))
    return flags


def oracle(period: Period, ledgers: dict[str, Ledger], now: float) -> Figures:
    lo, hi = period.start, min(period.end, now)
    n = max(0, int((hi - lo) // 60))
    each = [_minutes(ledger, lo, n) for ledger in ledgers.values()]
    maintenance_n = blind_n = unplanned_n = planned_n = 0
    if not each:
        blind_n = n  # no service: nothing seen
    for minute in zip(*each, strict=True):
        anyone, everyone = 0, MAINT | BLIND | UNPLANNED | PLANNED
        for flags in minute:
            anyone |= flags
            everyone &= flags
        maintenance_n += bool(everyone & MAINT)  # all services in maintenance
        blind_n += bool(everyone & BLIND)  # all blind
        unplanned_n += bool(anyone & UNPLANNED)  # any out
        planned_n += bool(anyone & PLANNED) and not anyone & UNPLANNED
    maintenance_s, blind_s, unplanned_s, planned_s = (
        60.0 * c for c in (maintenance_n, blind_n, unplanned_n, planned_n))
    period_s = 60.0 * n
    observed_s = period_s - maintenance_s - blind_s
    return Figures(period_s=period_s, maintenance_s=maintenance_s, blind_s=blind_s,
                   unplanned_s=unplanned_s, planned_s=planned_s, observed_s=observed_s,
                   availability=1 - unplanned_s / observed_s if observed_s else None)


def same(expected: Figures, got: Figures) -> None:
    assert expected.period_s == got.period_s
    assert expected.maintenance_s == got.maintenance_s
    assert expected.blind_s == got.blind_s
    assert expected.unplanned_s == got.unplanned_s
    assert expected.planned_s == got.planned_s
    assert expected.observed_s == got.observed_s
    if expected.availability is None:
        assert got.availability is None
    else:
        assert expected.availability == pytest.approx(got.availability, rel=1e-12, abs=1e-15)


# --- generated months ----------------------------------------------------------------------

ZONES = st.sampled_from([UTC, BERLIN, NEW_YORK])
MONTHS = st.builds(lambda y, m: f"{y}-{m:02d}", st.integers(2025, 2027), st.integers(1, 12))
SPAN = 31 * 24 * 60  # minutes in the longest month
EDGE = 3 * 24 * 60  # intervals reach this far before and after the month


def _intervals(longest: int, most: int):
    return st.lists(st.tuples(st.integers(-EDGE, SPAN + EDGE), st.integers(1, longest)),
                    max_size=most)


@st.composite
def ledgers(draw, period: Period):
    def at_minutes(pairs):
        return tuple((period.start + 60 * a, period.start + 60 * (a + n)) for a, n in pairs)

    covered = draw(_intervals(SPAN + EDGE, 4))
    if draw(st.booleans()):  # monitoring began at some minute and ran since, with gaps
        began = draw(st.integers(-EDGE, SPAN + EDGE))
        covered = [(began, SPAN + EDGE - began), *covered]
        gaps = draw(_intervals(6 * 60, 4))
    else:
        gaps = []
    return Ledger(outages=at_minutes(draw(_intervals(3 * 24 * 60, 4))),
                  maintenance=at_minutes(draw(_intervals(2 * 24 * 60, 3))),
                  failing=at_minutes(draw(_intervals(2 * 24 * 60, 4))),
                  covered=tuple(difference(at_minutes(covered), at_minutes(gaps))))


@st.composite
def months(draw):
    period = parse_period(draw(MONTHS), draw(ZONES))
    # mostly a finished month or a running one; sometimes before it began
    now = period.start + 60 * draw(st.one_of(st.just(SPAN + EDGE), st.integers(1, SPAN),
                                             st.integers(-EDGE, SPAN + EDGE)))
    return period, now


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_services_figures_are_the_oracles(data):
    period, now = data.draw(months())
    ledger = data.draw(ledgers(period))
    same(oracle(period, {"imap": ledger}, now), figures(period, ledger, now=now))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_platforms_figures_are_the_oracles(data):
    period, now = data.draw(months())
    services = data.draw(st.lists(ledgers(period), min_size=0, max_size=3))
    named = {f"svc{i}": ledger for i, ledger in enumerate(services)}
    same(oracle(period, named, now), platform_figures(period, named, now=now))


# --- the figures, case by case -------------------------------------------------------------

NOV = parse_period("2026-11", BERLIN)
ALL = ((NOV.start - 400 * 24 * H, NOV.end + 400 * 24 * H),)  # covered throughout


def test_maintenance_overlapping_an_outage_is_planned_not_unplanned():
    ledger = Ledger(outages=((at("2026-11-10T10:00"), at("2026-11-10T12:00")),),
                    maintenance=((at("2026-11-10T11:00"), at("2026-11-10T13:00")),),
                    failing=((at("2026-11-10T11:00"), at("2026-11-10T12:30")),),
                    covered=ALL)
    got = figures(NOV, ledger, now=NOV.end + H)
    assert (720 * H, 2 * H, 0.0, 1 * H, 1.5 * H) == (
        got.period_s, got.maintenance_s, got.blind_s, got.unplanned_s, got.planned_s)
    assert 718 * H == got.observed_s
    assert 1 - 1 / 718 == pytest.approx(got.availability)


def test_failing_outside_maintenance_is_neither_planned_nor_unplanned():
    ledger = Ledger(failing=((at("2026-11-10T10:00"), at("2026-11-10T12:00")),), covered=ALL)
    got = figures(NOV, ledger, now=NOV.end)
    assert (0.0, 0.0, 1.0) == (got.unplanned_s, got.planned_s, got.availability)


def test_an_outage_across_the_month_boundary_counts_in_both_months_split_there():
    ledger = Ledger(outages=((at("2026-10-31T23:00"), at("2026-11-01T02:00")),), covered=ALL)
    october = figures(parse_period("2026-10", BERLIN), ledger, now=NOV.end)
    november = figures(NOV, ledger, now=NOV.end)
    assert 1 * H == october.unplanned_s
    assert 2 * H == november.unplanned_s
    assert 1 - 1 / 745 == pytest.approx(october.availability)  # October 2026 ends DST in Berlin


@pytest.mark.parametrize(("zone", "label", "day", "hours"), [
    (NEW_YORK, "2026-03", "2026-03-08", 743),  # 31 days, one of them 23 h
    (NEW_YORK, "2026-11", "2026-11-01", 721),  # 30 days, one of them 25 h
    (BERLIN, "2026-03", "2026-03-29", 743),
    (BERLIN, "2026-10", "2026-10-25", 745),  # 31 days, one of them 25 h
])
def test_a_dst_month_is_as_long_as_it_is_and_has_a_23_or_25_hour_day(zone, label, day, hours):
    month = parse_period(label, zone)
    assert hours * H == month.end - month.start
    lengths = {d.label: d.end - d.start for d in days(month, zone)}
    assert (31 if label.endswith(("03", "10")) else 30) == len(lengths)
    assert (23 if hours % 24 == 23 else 25) * H == lengths[day]
    assert {24 * H} == {v for k, v in lengths.items() if k != day}
    ledger = Ledger(outages=((month.start + H, month.start + 2 * H),),
                    covered=((month.start, month.end),))
    got = figures(month, ledger, now=month.end)
    assert hours * H == got.period_s
    assert 1 - 1 / hours == pytest.approx(got.availability)


def test_berlins_november_has_720_hours():
    assert 720 * H == NOV.end - NOV.start


def test_days_are_consecutive_local_days_clipped_to_the_period():
    week = custom_period(date(2026, 10, 22), date(2026, 10, 29), BERLIN)
    got = days(week, BERLIN)
    assert [f"2026-10-{d}" for d in range(22, 29)] == [d.label for d in got]
    assert all(a.end == b.start for a, b in itertools.pairwise(got))
    assert (week.start, week.end) == (got[0].start, got[-1].end)
    part = Period(at("2026-11-02T12:00"), at("2026-11-04T06:00"), "x")
    assert [(at("2026-11-02T12:00"), at("2026-11-03T00:00")),
            (at("2026-11-03T00:00"), at("2026-11-04T00:00")),
            (at("2026-11-04T00:00"), at("2026-11-04T06:00"))] == [
        (d.start, d.end) for d in days(part, BERLIN)]
    assert [] == days(Period(5.0, 5.0, "empty"), BERLIN)


def test_a_period_before_monitoring_began_is_blind_and_has_no_availability():
    began = NOV.end + 24 * H
    ledger = Ledger(covered=((began, began + 30 * 24 * H),))
    got = figures(NOV, ledger, now=began + 48 * H)
    assert (720 * H, 720 * H, 0.0, None) == (
        got.period_s, got.blind_s, got.observed_s, got.availability)


def test_the_time_before_monitoring_began_is_blind_not_uptime():
    began = at("2026-11-16T00:00")
    ledger = Ledger(outages=((at("2026-11-20T00:00"), at("2026-11-20T06:00")),),
                    covered=((began, NOV.end),))
    got = figures(NOV, ledger, now=NOV.end)
    assert 360 * H == got.blind_s
    assert 1 - 6 / 360 == pytest.approx(got.availability)


def test_an_open_outage_is_clipped_at_now_and_the_period_too():
    now = at("2026-11-15T12:00")
    for end in (now, float("inf"), NOV.end + 10 * H):  # the caller's `now`, or anything later
        ledger = Ledger(outages=((at("2026-11-15T09:00"), end),), covered=ALL)
        got = figures(NOV, ledger, now=now)
        assert (14.5 * 24 * H, 3 * H) == (got.period_s, got.unplanned_s)
        assert 1 - 3 / (14.5 * 24) == pytest.approx(got.availability)


def test_a_period_in_the_future_counts_nothing():
    ledger = Ledger(outages=((NOV.start, NOV.end),), maintenance=((NOV.start, NOV.end),),
                    covered=ALL)
    for now in (NOV.start, NOV.start - H):
        assert Figures(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None) == figures(NOV, ledger, now=now)


def test_a_customer_reported_outage_while_the_monitor_was_blind_counts_as_unplanned():
    outage = (at("2026-11-05T08:00"), at("2026-11-05T10:00"))
    blind = (at("2026-11-05T07:00"), at("2026-11-05T11:00"))
    ledger = Ledger(outages=(outage,), covered=((NOV.start, blind[0]), (blind[1], NOV.end)))
    got = figures(NOV, ledger, now=NOV.end)
    assert (2 * H, 2 * H) == (got.unplanned_s, got.blind_s)
    assert 718 * H == got.observed_s
    assert 1 - 2 / 718 == pytest.approx(got.availability)


def test_a_month_all_maintenance_has_no_availability():
    got = figures(NOV, Ledger(maintenance=((NOV.start, NOV.end),), covered=ALL), now=NOV.end)
    assert (720 * H, 0.0, None) == (got.maintenance_s, got.observed_s, got.availability)


def test_the_platform_is_in_maintenance_only_when_all_its_services_are():
    day = (at("2026-11-10T00:00"), at("2026-11-11T00:00"))
    imap = Ledger(maintenance=(day,), failing=(day,), covered=ALL)
    smtp = Ledger(maintenance=((at("2026-11-10T00:00"), at("2026-11-10T12:00")),),
                  outages=((at("2026-11-10T12:00"), at("2026-11-10T13:00")),), covered=ALL)
    web = Ledger(maintenance=((at("2026-11-10T06:00"), at("2026-11-10T18:00")),), covered=ALL)
    got = platform_figures(NOV, {"imap": imap, "smtp": smtp, "web": web}, now=NOV.end)
    assert 6 * H == got.maintenance_s  # 06:00-12:00, when all three were
    assert 1 * H == got.unplanned_s  # smtp's outage, although imap was in maintenance then
    assert 23 * H == got.planned_s  # imap failing all day, less the hour that is unplanned
    assert 0.0 == got.blind_s
    assert 1 - 1 / 714 == pytest.approx(got.availability)


def test_the_platform_is_blind_only_when_all_its_services_are():
    a = Ledger(covered=((NOV.start, at("2026-11-20T00:00")),))
    b = Ledger(outages=((at("2026-11-26T00:00"), at("2026-11-26T02:00")),),
               covered=((NOV.start, at("2026-11-25T00:00")),))
    got = platform_figures(NOV, {"a": a, "b": b}, now=NOV.end)
    assert (142 * H, 2 * H) == (got.blind_s, got.unplanned_s)
    assert 1 - 2 / 578 == pytest.approx(got.availability)


def test_a_platform_without_services_observed_nothing():
    got = platform_figures(NOV, {}, now=NOV.end)
    assert (720 * H, 720 * H, None) == (got.period_s, got.blind_s, got.availability)


# --- periods -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "label", "start", "end"), [
    ("2026-11", "2026-11", "2026-11-01", "2026-12-01"),
    ("2026-12", "2026-12", "2026-12-01", "2027-01-01"),
    ("2026-Q4", "2026-Q4", "2026-10-01", "2027-01-01"),
    ("2026-q1", "2026-Q1", "2026-01-01", "2026-04-01"),
    ("2026-Q2", "2026-Q2", "2026-04-01", "2026-07-01"),
    ("2026", "2026", "2026-01-01", "2027-01-01"),
    (" 2000-01 ", "2000-01", "2000-01-01", "2000-02-01"),
    ("2100", "2100", "2100-01-01", "2101-01-01"),
])
def test_parse_period_gives_local_midnights(text, label, start, end):
    for zone in (BERLIN, NEW_YORK, UTC):
        assert Period(at(start, zone), at(end, zone), label) == parse_period(text, zone)


@pytest.mark.parametrize(("text", "says"), [
    ("2026-13", "month 13 is not 01..12"),
    ("2026-00", "month 00 is not 01..12"),
    ("2026-Q5", "quarter Q5 is not Q1..Q4"),
    ("2026-Q0", "quarter Q0 is not Q1..Q4"),
    ("1999-12", "year 1999 is outside 2000..2100"),
    ("2101", "year 2101 is outside 2000..2100"),
    ("2026-1", "is not a month, quarter or year"),
    ("26-11", "is not a month, quarter or year"),
    ("2026/11", "is not a month, quarter or year"),
    ("2026-11-03", "is not a month, quarter or year"),
    ("november", "is not a month, quarter or year"),
    ("", "is not a month, quarter or year"),
    ("२०२६", "is not a month, quarter or year"),  # digits, but not ASCII ones
])
def test_parse_period_refuses_anything_else_in_one_line_with_an_example(text, says):
    with pytest.raises(ValueError, match=r"e\.g\.") as refused:
        parse_period(text, BERLIN)
    assert says in str(refused.value)
    assert "\n" not in str(refused.value)


def test_custom_period_runs_from_the_start_day_to_the_end_day_excluded():
    got = custom_period(date(2026, 10, 29), date(2026, 11, 5), NEW_YORK)
    assert Period(at("2026-10-29", NEW_YORK), at("2026-11-05", NEW_YORK),
                  "2026-10-29..2026-11-05") == got
    assert 7 * 24 * H + H == got.end - got.start  # across the end of DST (2026-11-01)
    one = custom_period(date(2026, 11, 3), date(2026, 11, 4), BERLIN)
    assert ["2026-11-03"] == [d.label for d in days(one, BERLIN)]


@pytest.mark.parametrize(("start", "end", "says"), [
    (date(2026, 11, 10), date(2026, 11, 10), "the end must be after the start"),
    (date(2026, 11, 10), date(2026, 11, 3), "the end must be after the start"),
    (date(1999, 12, 31), date(2000, 1, 2), "dates must lie in 2000..2100"),
    (date(2100, 12, 1), date(2101, 1, 2), "dates must lie in 2000..2100"),
])
def test_custom_period_refuses_an_empty_or_out_of_range_span(start, end, says):
    with pytest.raises(ValueError, match=r"e\.g\.") as refused:
        custom_period(start, end, BERLIN)
    assert says in str(refused.value)
    assert "\n" not in str(refused.value)
    assert custom_period(date(2100, 12, 1), date(2101, 1, 1), UTC).label == "2100-12-01..2101-01-01"


def test_month_of_is_the_local_calendar_month():
    just_after = at("2026-12-01T00:30")  # 2026-11-30 23:30 UTC
    assert parse_period("2026-12", BERLIN) == month_of(just_after, BERLIN)
    assert parse_period("2026-11", UTC) == month_of(just_after, UTC)
    assert parse_period("2026-11", BERLIN) == month_of(NOV.start, BERLIN)
    assert parse_period("2026-11", BERLIN) == month_of(NOV.end - 0.001, BERLIN)


# --- the interval algebra, against sets of minutes -----------------------------------------

SMALL = st.lists(st.tuples(st.integers(0, 200), st.integers(-5, 60)).map(
    lambda p: (float(p[0]), float(p[0] + p[1]))), max_size=6)


def points(intervals) -> set[int]:
    return {t for s, e in intervals for t in range(int(s), int(e))}


@settings(max_examples=300, deadline=None)
@given(SMALL, SMALL)
def test_the_interval_algebra_is_set_algebra(a, b):
    for got, expected in ((union(a), points(a)),
                          (intersection(a, b), points(a) & points(b)),
                          (difference(a, b), points(a) - points(b))):
        assert expected == points(got)
        assert all(s < e for s, e in got)
        assert all(x[1] < y[0] for x, y in itertools.pairwise(got))  # sorted, apart
    assert len(points(a)) == measure(a)


# --- incidents -----------------------------------------------------------------------------

def incident(n: int, start: str, end: str | None, severity: int = 2) -> IncidentSpan:
    return IncidentSpan(id=f"EU-{n}", platform="eu", severity=severity, start=at(start),
                        end=None if end is None else at(end), services=("imap",))


def test_incident_stats_by_severity_longest_and_mean_time_to_restore():
    spans = [
        incident(4, "2026-11-20T10:00", "2026-11-20T10:30", severity=3),
        incident(1, "2026-10-31T23:00", "2026-11-01T01:00", severity=1),  # across the boundary
        incident(2, "2026-11-05T08:00", "2026-11-05T09:00"),
        incident(3, "2026-11-10T08:00", "2026-11-10T08:00"),  # resolved at once
        incident(5, "2026-11-29T22:00", None),  # still open
        incident(0, "2026-10-20T08:00", "2026-10-20T09:00"),  # before
        incident(6, "2026-12-01T00:00", "2026-12-01T01:00"),  # after
    ]
    got = incident_stats(NOV, spans, now=at("2026-11-30T12:00"))
    assert ["EU-1", "EU-2", "EU-3", "EU-4", "EU-5"] == [s.id for s in got.incidents]
    assert 5 == got.count
    assert {1: 1, 2: 3, 3: 1} == got.by_severity
    assert [1, 2, 3] == list(got.by_severity)
    assert 2 * H == got.longest_s  # the whole incident, not its November part
    assert (2 * H + H + 0 + 0.5 * H) / 4 == got.mttr_s
    october = incident_stats(parse_period("2026-10", BERLIN), spans, now=at("2026-11-30T12:00"))
    assert ["EU-0", "EU-1"] == [s.id for s in october.incidents]
    assert 2 * H == october.longest_s


def test_incident_stats_ignore_what_ends_after_now_and_what_starts_after_it():
    spans = [incident(1, "2026-11-05T08:00", "2026-11-05T12:00"),
             incident(2, "2026-11-06T08:00", "2026-11-06T09:00")]
    got = incident_stats(NOV, spans, now=at("2026-11-05T10:00"))
    assert (1, None, None) == (got.count, got.longest_s, got.mttr_s)
    empty = incident_stats(NOV, [], now=NOV.end)
    assert (0, {}, None, None, ()) == (empty.count, empty.by_severity, empty.longest_s,
                                       empty.mttr_s, empty.incidents)
