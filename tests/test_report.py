"""The availability report end to end: a generated month written to a real SQLite store as
the daemon writes it (outages, coverage, maintenance windows), read back by ``History``,
checked against the minute-by-minute oracle of ``core/availability``; the CSV and JSON
forms parsed back; the API's answers and refusals."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.core.test_availability import oracle, same
from tests.helpers.engine import EngineHarness
from tests.helpers.fakeclock import FakeClock

from outagewatch.api import Api, Leading
from outagewatch.config import Settings
from outagewatch.core.availability import Ledger, intersection, parse_period
from outagewatch.core.maintenance import Window, WindowKind, WindowState
from outagewatch.core.report import CSV_COLUMNS, Report, report_csv, report_json
from outagewatch.history import History
from outagewatch.model import Result
from outagewatch.store import Changes, OutageSpan
from outagewatch.store.sqlite import SqliteStore
from outagewatch.topology import build_topology

BERLIN = ZoneInfo("Europe/Berlin")
SERVICES = ("imap-eu", "smtp-eu")
SPAN = 30 * 24 * 60  # minutes of November
EDGE = 2 * 24 * 60
TOKEN = "0123456789abcdef0123"


def config(tmp: Path) -> Settings:
    return Settings(
        platforms={"eu": {"incident_recipients": ["oncall@example.com"],
                          "calendar": {"timezone": "Europe/Berlin"}}},
        targets=[{"name": n, "platform": "eu", "type": "http", "url": f"http://{n}/"}
                 for n in SERVICES],
        state={"path": tmp / "state.db"})


def intervals(longest: int, most: int):
    return st.lists(st.tuples(st.integers(-EDGE, SPAN + EDGE), st.integers(1, longest)),
                    max_size=most)


MONTH = st.fixed_dictionaries({name: st.fixed_dictionaries({
    "outages": intervals(2 * 24 * 60, 3), "maintenance": intervals(24 * 60, 2),
    "covered": intervals(SPAN + EDGE, 3)}) for name in SERVICES})


def written(period_start: float, month: dict) -> tuple[Changes, dict[str, Ledger]]:
    """The month as the daemon's changes, and as the oracle's ledgers."""
    def at(pairs):
        return tuple((period_start + 60 * a, period_start + 60 * (a + n)) for a, n in pairs)

    changes = Changes()
    ledgers = {}
    for name, parts in month.items():
        outages, windows, covered = (at(parts[k]) for k in ("outages", "maintenance",
                                                             "covered"))
        for start, end in outages:
            changes.outages[(name, start)] = OutageSpan(name, "eu", start, end, None)
        for i, (start, end) in enumerate(windows):
            changes.windows[f"{name}-{i}"] = Window(
                id=f"{name}-{i}", platform="eu", targets=(name,), start=start, end=end,
                kind=WindowKind.EMERGENCY, description="", impact="", registered_at=start,
                state=WindowState.FINISHED, closed_at=end)
        for location, (start, end) in enumerate(covered):  # a location each: they overlap
            changes.coverage[(name, f"loc{location}", start)] = end
        # the probes' outages count only while they watched (the monitor's gaps are blind)
        ledgers[name] = Ledger(outages=tuple(intersection(outages, covered)),
                               maintenance=windows, covered=covered)
    return changes, ledgers


async def november(state_dir: Path, changes: Changes, now: float) -> Report:
    """The report of November 2026 for platform eu, from ``changes`` written to a new SQLite
    state in ``state_dir``."""
    settings_ = config(state_dir)
    store = await SqliteStore.open(settings_.state.path, threaded=False)
    try:
        await store.apply(changes)
        topology = build_topology(settings_, today=period_date())
        return await History(store, lambda: topology).report(
            lambda zone: parse_period("2026-11", zone), ["eu"], now=now)
    finally:
        await store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(month=MONTH, until=st.integers(-EDGE, SPAN + EDGE))
async def test_the_reports_figures_are_the_oracles_for_a_generated_month(month, until):
    period = parse_period("2026-11", BERLIN)
    now = period.start + 60 * until
    changes, ledgers = written(period.start, month)
    with tempfile.TemporaryDirectory() as tmp:
        report = await november(Path(tmp), changes, now)
    (platform,) = report.platforms
    same(oracle(period, ledgers, now), platform.figures)
    for service in platform.services:
        same(oracle(period, {service.name: ledgers[service.name]}, now), service.figures)
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert [r["service"] for r in rows] == ["", *SERVICES]
    assert tuple(rows[0]) == CSV_COLUMNS
    for row, figures in zip(rows, [platform.figures, *(s.figures for s in platform.services)],
                            strict=True):
        assert float(row["unplanned_min"]) == pytest.approx(figures.unplanned_s / 60)
        assert float(row["blind_min"]) == pytest.approx(figures.blind_s / 60)
        assert (row["availability"] == "") == (figures.availability is None)
    data = json.loads(json.dumps(report_json(report)))
    assert data["platforms"][0]["availability"] == platform.figures.availability
    assert data["platforms"][0]["maintenance_min"] == pytest.approx(
        platform.figures.maintenance_s / 60, abs=0.01)


def period_date() -> date:
    return date(2026, 11, 15)


# -- the API ----------------------------------------------------------------------------------

@pytest.fixture(name="api")
async def _api(tmp_path):
    async with EngineHarness(config(tmp_path), FakeClock()) as h:
        leading = Leading(h.maintenance, h.desk, h.writer)
        api = Api(engine=h.engine, leading=lambda: leading, store=h.store, last={},
                  clock=h.clock, token=TOKEN,
                  history=History(h.store, lambda: h.engine.topology))
        app = web.Application()
        app.router.add_routes(api.routes())
        async with TestClient(TestServer(app)) as client:
            client.harness = h  # type: ignore[attr-defined]
            yield client


async def answering_then_down(h: EngineHarness) -> None:
    """The first target answers for 10 minutes, then is down long enough to be declared."""
    for _ in range(10):
        h.run(Result.OK, 0.2)
        await h.clock.advance(60)
    for _ in range(20):
        h.run()
        await h.clock.advance(60)
    await h.writer.flush()


async def get(client, query: str) -> tuple[int, str, str]:
    response = await client.get(f"/api/v1/report?{query}")
    return response.status, response.content_type, await response.text()


class TestApi:
    async def test_an_outage_in_each_format(self, api):
        h = api.harness
        h.start()
        await answering_then_down(h)
        month = f"{h.clock.now().astimezone(BERLIN):%Y-%m}"
        status, kind, body = await get(api, f"period={month}&platform=eu")
        assert (200, "application/json") == (status, kind), body
        data = json.loads(body)
        (eu,) = data["platforms"]
        assert eu["timezone"] == "Europe/Berlin"
        assert eu["incidents"] == 1
        assert 0 < eu["availability"] < 1
        assert eu["unplanned_min"] > 0
        assert [s["service"] for s in eu["services"]] == list(SERVICES)
        status, kind, body = await get(api, f"period={month}&format=csv")
        assert (200, "text/csv") == (status, kind)
        assert [r["service"] for r in csv.DictReader(io.StringIO(body))] == ["", *SERVICES]
        status, kind, body = await get(api, f"period={month}&format=text")
        assert (200, "text/plain") == (status, kind)
        assert body.startswith(f"Availability report {month}")
        assert "Platform eu (Europe/Berlin):" in body
        status, kind, body = await get(api, f"period={month}&format=html")
        assert (200, "text/html") == (status, kind)
        assert body.count('aria-label="Daily availability') == 1 + len(SERVICES)  # as the page
        assert "Platform eu" in body
        assert "<script" not in body

    @pytest.mark.parametrize(("query", "field", "said"), [
        ("", "period", "give period"),
        ("period=2026-13", "period", "e.g. 2026-11"),
        ("period=2026-11&from=2026-11-01&to=2026-11-02", "period", "not both"),
        ("from=2026-11-10&to=2026-11-03", "from", ""),
        ("from=2026-11-01&to=garbage", "to", "is not a date such as 2026-11-03"),
        ("from=2000-01-01&to=2101-01-01", "to", "a range of at most 400 days"),
        ("period=2026-11&platform=us", "platform", "no platform 'us'"),
        ("period=2026-11&format=pdf", "format", "format must be one of"),
    ])
    async def test_mistakes_are_one_422_naming_the_field(self, api, query, field, said):
        status, _, body = await get(api, query)
        answer = json.loads(body)
        assert (422, field) == (status, answer["field"])
        assert said in answer["error"]


async def test_the_availability_gauge_is_the_running_months_report(tmp_path):
    """``outagewatch_availability_ratio{platform,service,period="month"}``: the report's
    figures of the running month, refreshed every few minutes; nothing observed, no series."""
    import asyncio

    from outagewatch.app import AVAILABILITY_EVERY, measure_availability

    async with EngineHarness(config(tmp_path), FakeClock()) as h:
        history = History(h.store, lambda: h.engine.topology)
        task = asyncio.create_task(measure_availability(history, h.metrics, h.clock))
        try:
            for _ in range(20):
                await asyncio.sleep(0)
            assert h.registry.get_sample_value(
                "outagewatch_availability_ratio",
                {"platform": "eu", "service": "imap-eu", "period": "month"}) is None
            h.start()
            await answering_then_down(h)

            def gauge(service: str) -> float | None:
                return h.registry.get_sample_value(
                    "outagewatch_availability_ratio",
                    {"platform": "eu", "service": service, "period": "month"})

            month = f"{h.clock.now().astimezone(BERLIN):%Y-%m}"
            for _ in range(10):  # the task's next turn, computed off the loop in real time
                await h.clock.advance(AVAILABILITY_EVERY)
                await asyncio.sleep(0.3)
                report = await history.report(lambda zone: parse_period(month, zone), ["eu"],
                                              now=h.clock.now().timestamp())
                (eu,) = report.platforms
                imap = next(s for s in eu.services if s.name == "imap-eu")
                if gauge("imap-eu") == pytest.approx(imap.figures.availability):
                    break
        finally:
            task.cancel()
        assert imap.figures.availability is not None
        assert 0 < imap.figures.availability < 1
        assert gauge("imap-eu") == pytest.approx(imap.figures.availability)
        assert gauge("") == pytest.approx(eu.figures.availability)


class TestMonthlyMail:
    def test_due_from_the_first_business_day(self):
        from datetime import datetime as dt

        from outagewatch.core.maintenance import Calendar
        from outagewatch.core.report import monthly_due

        berlin = Calendar(zone=BERLIN, holidays=frozenset({date(2027, 1, 1)}))

        def due(text: str) -> str | None:
            return monthly_due(dt.fromisoformat(text).replace(tzinfo=BERLIN).timestamp(),
                               berlin)

        assert due("2026-11-01T12:00") is None  # a Sunday
        assert due("2026-11-02T00:00") == "2026-10"  # Monday, the first business day
        assert due("2026-11-08T23:59") == "2026-10"  # a week to catch up...
        assert due("2026-11-09T00:00") is None  # ...not longer: a pruned mail is not resent
        assert due("2026-12-01T00:00") == "2026-11"  # local midnight, 23:00 UTC before
        assert due("2027-01-01T10:00") is None  # a holiday...
        assert due("2027-01-02T10:00") is None  # ...a Saturday, a Sunday
        assert due("2027-01-04T00:00") == "2026-12"

    async def test_once_per_month_to_the_info_list(self, tmp_path):
        import asyncio

        from outagewatch.app import REPORT_CHECK, mail_monthly_reports
        from outagewatch.core.report import report_thread

        settings_ = Settings(
            platforms={"eu": {"incident_recipients": ["oncall@example.com"],
                              "info_recipients": ["info@example.com", "cio@example.com"],
                              "calendar": {"timezone": "Europe/Berlin"}}},
            targets=[{"name": n, "platform": "eu", "type": "http", "url": f"http://{n}/"}
                     for n in SERVICES],
            notify={"smtp": {"host": "127.0.0.1"}, "sender": "NOC <noc@example.com>"},
            report={"monthly": True}, state={"path": tmp_path / "state.db"})
        start = datetime(2026, 11, 30, 20, 0, tzinfo=BERLIN)
        async with EngineHarness(settings_, FakeClock(start)) as h:
            h.start()
            for _ in range(30):
                h.run(Result.OK, 0.2)
                await h.clock.advance(60)
            await h.writer.flush()
            history = History(h.store, lambda: h.engine.topology)
            task = asyncio.create_task(mail_monthly_reports(
                history, composer=h.composer, writer=h.writer, store=h.store, clock=h.clock,
                enabled=lambda: True))
            try:
                for _ in range(50):
                    await asyncio.sleep(0)
                thread = report_thread("eu", "2026-11").key
                assert await h.store.thread(thread) == []  # November is not over
                for _ in range(6):  # past midnight into 1 December, a Tuesday
                    await h.clock.advance(REPORT_CHECK)
                    await asyncio.sleep(0.2)  # the report is computed off the loop
                for _ in range(500):
                    mails = await h.store.thread(thread)
                    if mails:
                        break
                    await asyncio.sleep(0.01)
                await h.clock.advance(REPORT_CHECK)  # an hour later: not again
                await asyncio.sleep(0.3)
                mails = await h.store.thread(thread)
            finally:
                task.cancel()
        assert sorted(m.lane for m in mails) == ["cio@example.com", "info@example.com"]
        assert {m.number for m in mails} == {0}  # one mail, never again
        (subject,) = {m.payload["subject"] for m in mails}
        assert subject.startswith("Availability report eu 2026-11: 100.000 %")
        assert "Platform eu (Europe/Berlin): 100.000 %" in mails[0].payload["body"]


async def test_what_history_remembers_is_what_it_would_read_again(tmp_path):
    """The page's daily bars and chart, asked twice (the second time from what History
    remembers) and asked of a fresh History, agree, while time and runs go on."""
    async with EngineHarness(config(tmp_path), FakeClock()) as h:
        h.start()
        remembering = History(h.store, lambda: h.engine.topology)
        for minutes in (30, 700, 1500):  # across midnight and past the settling hour
            for _ in range(minutes // 10):
                h.run(Result.OK if minutes != 700 else Result.TIMEOUT, 0.3)
                await h.clock.advance(600)
            await h.writer.flush()
            now = h.clock.now().timestamp()
            fresh = History(h.store, lambda: h.engine.topology)
            for _ in range(2):
                assert await remembering.daily("eu", 90, now=now) == await fresh.daily(
                    "eu", 90, now=now)
                assert await remembering.response_times(
                    list(SERVICES), now - 86400, now=now) == await fresh.response_times(
                    list(SERVICES), now - 86400, now=now)


class TestWhatTheLedgerMeans:
    """Review findings: what counts as maintenance and as outage when windows are cancelled
    or entered late, and when the monitor itself was down during an outage."""

    async def figures_of(self, tmp_path, changes: Changes, now: float):
        report = await november(tmp_path, changes, now)
        return next(s.figures for s in report.platforms[0].services if s.name == "imap-eu")

    def day(self, hours: float) -> float:
        return parse_period("2026-11", BERLIN).start + 10 * 86400 + hours * 3600

    def watched(self, *spans: tuple[float, float]) -> Changes:
        return Changes(coverage={("imap-eu", "", a): b for a, b in spans},
                       outages={("imap-eu", self.day(2)): OutageSpan(
                           "imap-eu", "eu", self.day(2), self.day(4), None)})

    async def test_a_window_cancelled_before_its_start_held_nothing(self, tmp_path):
        changes = self.watched((self.day(0), self.day(24)))
        changes.windows["w"] = Window(
            id="w", platform="eu", targets=("imap-eu",), start=self.day(1), end=self.day(20),
            kind=WindowKind.PLANNED, description="", impact="",
            registered_at=self.day(-100), state=WindowState.CANCELLED, closed_at=None)
        figures = await self.figures_of(tmp_path, changes, self.day(24))
        assert (figures.maintenance_s, figures.unplanned_s) == (0, 2 * 3600)

    async def test_a_window_entered_late_does_not_rewrite_the_past(self, tmp_path):
        changes = self.watched((self.day(0), self.day(24)))
        changes.windows["w"] = Window(
            id="w", platform="eu", targets=("imap-eu",), start=self.day(-48), end=self.day(6),
            kind=WindowKind.EMERGENCY, description="", impact="", registered_at=self.day(3),
            state=WindowState.FINISHED, closed_at=self.day(6))
        figures = await self.figures_of(tmp_path, changes, self.day(24))
        assert figures.unplanned_s == 3600  # 02:00-03:00; from 03:00 the window held
        assert figures.maintenance_s == 3 * 3600
        assert figures.planned_s == 3600

    async def test_the_monitors_own_gap_inside_an_outage_is_blind_not_downtime(self, tmp_path):
        changes = self.watched((self.day(0), self.day(2.5)), (self.day(3.5), self.day(24)))
        figures = await self.figures_of(tmp_path, changes, self.day(24))
        assert figures.unplanned_s == 3600  # 02:00-02:30 and 03:30-04:00
        assert figures.blind_s >= 3600  # 02:30-03:30, and the month before the 10th


async def test_what_changes_the_past_shows_within_the_cache_time(tmp_path):
    """An incident opened by hand two days back changes days History remembered: the page's
    bars show it once CACHE_TTL has passed, as the report does at once."""
    from outagewatch.core.incidents import Book, opened
    from outagewatch.history import CACHE_TTL

    async with EngineHarness(config(tmp_path), FakeClock()) as h:
        h.start()
        history = History(h.store, lambda: h.engine.topology)
        for _ in range(3 * 24 * 6):  # three days answering, a run every 10 minutes
            h.run(Result.OK, 0.2)
            await h.clock.advance(600)
        await h.writer.flush()
        now = h.clock.now().timestamp()
        before = (await history.daily("eu", 5, now=now))["imap-eu"]
        assert all(v is None or v == 1 for _, v in before)
        platform = h.engine.topology.platforms["eu"]
        _, [notice] = opened(Book(), platform, now, reported=("imap-eu",), severity=2,
                             impact="mail bounces", since=now - 2 * 86400)
        await h.store.apply(Changes(incidents={notice.incident.id: notice.incident}))
        later = now + CACHE_TTL + 1
        after = (await history.daily("eu", 5, now=later))["imap-eu"]
        fresh = (await History(h.store, lambda: h.engine.topology).daily(
            "eu", 5, now=later))["imap-eu"]
        assert after == fresh
        assert after != before
