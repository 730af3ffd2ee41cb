"""DaemonStatusSource on the real engine, maintenance unit and SQLite store (fake clock):
the states, incidents with their timeline, windows and mails the page and feed show."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.engine.test_engine import every_minute, settings
from tests.helpers.engine import EngineHarness
from tests.helpers.fakeclock import FakeClock

from outagewatch.core.maintenance import Window, WindowKind
from outagewatch.history import History
from outagewatch.model import Result
from outagewatch.statuspage.live import DaemonStatusSource


def source_of(h: EngineHarness) -> DaemonStatusSource:
    return DaemonStatusSource(engine=h.engine, maintenance=h.maintenance, store=h.store,
                              clock=h.clock, targets=h.settings.targets, last={},
                              history=History(h.store, lambda: h.engine.topology))


def state(source: DaemonStatusSource) -> str:
    (service,) = source.services()
    return service.state


async def test_states_incident_timeline_windows_and_mails(tmp_path):
    async with EngineHarness(settings(tmp_path), FakeClock()) as h:
        h.start()
        source = source_of(h)
        assert "unknown" == state(source)  # never probed: nothing is claimed
        (service,) = source.services()
        assert ("http", "x", 30.0) == (service.type, service.host, service.threshold_s)
        h.run(Result.OK, 0.2)
        assert "operational" == state(source)
        await h.clock.advance(60)
        h.run()
        assert "degraded" == state(source)  # BAD, not an outage yet
        await every_minute(h, 16)
        assert "outage" == state(source)

        await h.writer.flush()
        (incident,) = await source.incidents(0)
        assert ("open", None, ("imap-eu",)) == (incident.state, incident.end,
                                                incident.services)
        assert [("open", "We have detected an outage on platform eu.")] == [
            (kind, text) for _, kind, text in incident.timeline]
        h.desk.change_incident(incident.id, note="Storage vendor engaged.")
        await h.writer.flush()  # the store is behind the desk by one write
        (incident,) = await source.incidents(0)
        assert ("note", "Storage vendor engaged.") == incident.timeline[-1][1:]
        assert "update" == incident.timeline[-2][1]

        now = h.clock.now().timestamp()
        h.maintenance.add(Window(
            id="hotfix", platform="eu", targets=("imap-eu",), start=now, end=now + 3600,
            kind=WindowKind.EMERGENCY, description="Disk swap", impact="", registered_at=0.0))
        await h.clock.settle()
        assert "maintenance" == state(source)
        (window,) = await source.windows(now)
        assert ("hotfix", "emergency", "Disk swap") == (window.id, window.kind,
                                                        window.description)

        await h.writer.flush()
        mails = await source.mails(0, None)
        assert {f"incident:{incident.id}/0", f"incident:{incident.id}/1",
                "maintenance:hotfix/0"} <= {m.id for m in mails}
        assert all(m.platform == "eu" for m in mails)
        assert [] == await source.mails(0, "us")
        opening = next(m for m in mails if m.id == f"incident:{incident.id}/0")
        assert opening.subject.startswith(f"Incident {incident.id} [OPEN]")

        times = (await source.response_times(now - 86400))["imap-eu"]
        assert 24 * 12 <= len(times) <= 24 * 12 + 1  # every 5-minute bucket of the day
        seen = [(p95, bad) for _, p95, bad in times if p95 is not None]
        assert seen  # from the rollups the engine wrote
        assert seen[-1][1] is True  # the latest runs are BAD
        days = (await source.daily(90))["imap-eu"]
        today = datetime.fromtimestamp(now, UTC).date().isoformat()
        assert (90, today) == (len(days), days[-1][0])
        assert days[0][1] is None  # before monitoring began: nothing observed, no figure
        assert days[-1][1] is not None
        assert days[-1][1] < 1  # today: an outage
