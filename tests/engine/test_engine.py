"""The engine on a fake clock: samples to verdicts to incidents to the outbox, and the
maintenance unit holding what its windows cover."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from structlog.testing import capture_logs
from tests.helpers.engine import EngineHarness
from tests.helpers.fakeclock import FakeClock

from outagewatch.app import pruning
from outagewatch.config import Settings
from outagewatch.core.maintenance import Refused
from outagewatch.core.render import ThreadKind
from outagewatch.errors import UnknownWindow
from outagewatch.model import Result
from outagewatch.store import Changes, Delivery, EnvelopeKey
from outagewatch.topology import build_topology


def settings(tmp_path, maintenance=None, **notify):
    return Settings(
        defaults={"interval": 60, "timeout": 35, "threshold": 30, "window": 900},
        platforms={"eu": {"incident_recipients": ["oncall@example.com"],
                          "info_recipients": ["info@example.com"],
                          "calendar": {"country": "DE", "subdivision": "BY",
                                       "timezone": "Europe/Berlin"}}},
        maintenance=maintenance or {},
        targets=[{"name": "imap-eu", "platform": "eu", "type": "http", "url": "http://x/",
                  "impact": "Users cannot read mail."}],
        notify={"smtp": {"host": "127.0.0.1"}, "sender": "NOC <noc@example.com>",
                "update_interval": 3600, **notify},
        state={"path": tmp_path / "state.db"},
    )


async def every_minute(h, minutes, **kw):
    for _ in range(minutes):
        await h.clock.advance(35)
        h.run(**kw)
        await h.clock.advance(25)


class TestEngine:
    async def test_declared_by_the_timer_and_mailed(self, tmp_path):
        """The outage is declared at streak start + 900 s by the timer, and its OPEN mail
        is in the outbox at once."""
        async with EngineHarness(settings(tmp_path), FakeClock()) as h:
            start = h.clock.now()
            await every_minute(h, 14)
            assert [] == await h.outbox()
            await h.clock.advance(100)  # past 35 + 900 s, with no run in between
            assert [("open", 0)] == await h.outbox()
            (incident,) = await h.incidents()
            assert start.timestamp() + 35 == incident.started_at  # the first BAD run's start
            assert start.timestamp() + 935 == incident.opened_at  # the timer, to the second
            assert 1 == h.registry.get_sample_value(
                "outagewatch_target_outage", {"target": "imap-eu", "type": "http",
                                              "platform": "eu"})

    async def test_cadence_survives_a_restart(self, tmp_path):
        """Restarted 20 min after the OPEN mail, the next UPDATE comes 60 min after it, not
        at once and not twice."""
        cfg, clock = settings(tmp_path), FakeClock()
        async with EngineHarness(cfg, clock) as h:
            await every_minute(h, 16)
            assert [("open", 0)] == await h.outbox()
            opened = (await h.incidents())[0].last_mail_at
        await clock.advance(20 * 60)
        async with EngineHarness(cfg, clock) as again:
            again.start()
            assert [("open", 0)] == await again.outbox()
            await every_minute(again, 39)
            assert [("open", 0)] == await again.outbox()
            await every_minute(again, 2)
            assert [("open", 0), ("update", 1)] == await again.outbox()
            assert opened + 3600 == (await again.incidents())[0].last_mail_at

    async def test_recovery_resolves(self, tmp_path):
        async with EngineHarness(settings(tmp_path), FakeClock()) as h:
            await every_minute(h, 16)
            await every_minute(h, 2, result=Result.OK, duration=0.2)
            assert [("open", 0), ("resolved", 1)] == await h.outbox()

    async def test_removed_target_cannot_hold_an_incident_open(self, tmp_path):
        """A target dropped by a reload while in an incident leaves it: here the last one,
        so the incident resolves instead of staying open for ever."""
        async with EngineHarness(settings(tmp_path), FakeClock()) as h:
            await every_minute(h, 16)
            h.engine.forget("imap-eu")
            assert [("open", 0), ("resolved", 1)] == await h.outbox()

    async def test_operator_templates(self, tmp_path):
        templates = tmp_path / "templates"
        templates.mkdir()
        (templates / "subject.txt").write_text("DOWN: $services ($id)\n")
        async with EngineHarness(settings(tmp_path, templates=templates), FakeClock()) as h:
            await every_minute(h, 16)
            (incident,) = await h.incidents()
            (mail,) = await h.messages(ThreadKind.INCIDENT, incident.id)
        assert f"DOWN: imap-eu ({incident.id})" == mail.payload["subject"]
        assert "Users cannot read mail." in mail.payload["body"]

    async def test_without_a_relay_an_incident_is_kept_and_the_mail_named(self, tmp_path):
        """No notify section: the incident is tracked, and each mail that cannot go is
        logged (mail_not_sent), never dropped in silence."""
        cfg = settings(tmp_path).model_copy(update={"notify": None})
        async with EngineHarness(cfg, FakeClock()) as h:
            with capture_logs() as logs:
                await every_minute(h, 16)
            assert [] == await h.outbox()
            (incident,) = await h.incidents()
        (unsent,) = [e for e in logs if e["event"] == "mail_not_sent"]
        assert (incident.id, "open") == (unsent["incident_id"], unsent["kind"])
        assert "no notify relay" in unsent["reason"]

    async def test_one_operator_change_is_one_mail(self, tmp_path):
        """An ETR, an interval and a note in one change: one UPDATE naming all three."""
        async with EngineHarness(settings(tmp_path), FakeClock()) as h:
            await every_minute(h, 16)
            (incident,) = await h.incidents()
            h.desk.change_incident(incident.id.lower(), etr=h.origin + 7200,
                                     interval=1800, note="Storage vendor engaged.")
            assert [("open", 0), ("update", 1)] == await h.outbox()
            (_, update) = await h.messages(ThreadKind.INCIDENT, incident.id)
        assert ("expected time to restoration set; updates every 1800 s from now on; "
                "note from the operators") in update.payload["body"]


class TestMaintenance:
    """The fake clock starts on Monday 2026-03-02 09:00 UTC."""

    def window(self, clock, start_min, end_min, kind="emergency"):
        base = clock.now()
        return {"windows": [{"id": "dovecot-upgrade", "platform": "eu", "kind": kind,
                             "targets": ["imap-eu"],
                             "start": (base + timedelta(minutes=start_min)).isoformat(),
                             "end": (base + timedelta(minutes=end_min)).isoformat(),
                             "impact": "IMAP unavailable"}]}

    async def kinds(self, h):
        return [m.kind for m in await h.messages(ThreadKind.MAINTENANCE, "dovecot-upgrade")]

    async def test_window_hides_an_outage_and_the_streak_counts_from_its_end(self, tmp_path):
        """BAD from minute 0 to 60 inside a window from 5 to 30: ANNOUNCEMENT, STARTED,
        FINISHED with problems, and the OPEN only at the window's end + 15 min."""
        clock = FakeClock()
        cfg = settings(tmp_path, maintenance=self.window(clock, 5, 30))
        async with EngineHarness(cfg, clock) as h:
            h.start()
            assert ["announcement"] == await self.kinds(h)
            await every_minute(h, 29)
            assert ["announcement", "started"] == await self.kinds(h)
            assert [] == await h.outbox()
            assert 1 == h.registry.get_sample_value(
                "outagewatch_maintenance_active",
                {"target": "imap-eu", "type": "http", "platform": "eu"})
            await every_minute(h, 15)
            mails = await h.messages(ThreadKind.MAINTENANCE, "dovecot-upgrade")
            assert ["announcement", "started", "finished"] == [m.kind for m in mails]
            assert [] == await h.outbox()  # 44 min in: still inside end + window
            await every_minute(h, 2)
            assert [("open", 0)] == await h.outbox()
            assert (30, 45) == await h.opened()  # the streak counts from the window's end
        finished = mails[-1]
        assert "completed with problems: not answering normally at its end: imap-eu" in \
            finished.payload["body"]
        assert ["info@example.com"] == finished.payload["to"]

    async def test_good_at_the_end_is_successful(self, tmp_path):
        clock = FakeClock()
        async with EngineHarness(settings(tmp_path, maintenance=self.window(clock, 1, 5)),
                                 clock) as h:
            h.start()
            await every_minute(h, 8, result=Result.OK, duration=0.2)
            mails = await h.messages(ThreadKind.MAINTENANCE, "dovecot-upgrade")
        finished = [m for m in mails if m.kind == "finished"]
        assert 1 == len(finished)
        assert "finished: successful" in finished[0].payload["body"]

    async def test_planned_without_notice_is_refused(self, tmp_path):
        """Planned for Wednesday, registered on Monday: refused and logged, nothing
        announced."""
        clock = FakeClock()
        cfg = settings(tmp_path, maintenance=self.window(clock, 2 * 24 * 60, 2 * 24 * 60 + 60,
                                                         kind="planned"))
        async with EngineHarness(cfg, clock) as h:
            with capture_logs() as logs:
                h.start()
            assert [] == await self.kinds(h)
        (refused,) = [e for e in logs if e["event"] == "maintenance_refused"]
        assert "dovecot-upgrade" == refused["window"]
        assert "must be announced 3 business days ahead" in refused["reason"]

    async def test_incident_open_before_the_window_goes_on(self, tmp_path):
        """Declared at 15 min; a window from 20 to 90 min does not close it or stop its
        hourly UPDATE."""
        clock = FakeClock()
        async with EngineHarness(settings(tmp_path, maintenance=self.window(clock, 20, 90)),
                                 clock) as h:
            h.start()
            await every_minute(h, 80)
            assert [("open", 0), ("update", 1)] == await h.outbox()
            assert 1 == h.registry.get_sample_value(
                "outagewatch_target_outage", {"target": "imap-eu", "type": "http",
                                              "platform": "eu"})

    async def test_cancelled_window_releases_the_hold(self, tmp_path):
        """Issue 8.2: BAD from 09:00 under an emergency window 09:05-12:00, cancelled at
        09:30: the outage starts at 09:30 and its OPEN goes at 09:45 (it was 12:15)."""
        clock = FakeClock()
        async with EngineHarness(settings(tmp_path, maintenance=self.window(clock, 5, 180)),
                                 clock) as h:
            h.start()
            await every_minute(h, 30)
            h.maintenance.cancel("dovecot-upgrade")
            await every_minute(h, 14)
            assert [] == await h.outbox()
            await every_minute(h, 2)
            assert (30, 45) == await h.opened()

    async def test_shortened_window_releases_the_hold_at_its_new_end(self, tmp_path):
        """Issue 8.2: the end moved to 09:35 at 09:30: OPEN at 09:50, counted from 09:35."""
        clock = FakeClock()
        async with EngineHarness(settings(tmp_path, maintenance=self.window(clock, 5, 180)),
                                 clock) as h:
            h.start()
            await every_minute(h, 30)
            window = h.maintenance.windows()[0]
            h.maintenance.move(window.id, window.start, h.origin + 35 * 60)
            await every_minute(h, 22)
            assert (35, 50) == await h.opened()

    async def test_a_run_straddling_the_end_counts_from_the_end(self, tmp_path):
        """Issue 8.4: window 09:05-09:30; a GOOD run at 09:25; a hang from 09:29:50 becomes
        BAD at 09:30:20 (its threshold). The OPEN is at 09:45:00, counted from 09:30."""
        clock = FakeClock()
        async with EngineHarness(settings(tmp_path, maintenance=self.window(clock, 5, 30)),
                                 clock) as h:
            h.start()
            await clock.advance(25 * 60)
            h.finish(h.begin())
            await clock.advance(4 * 60 + 50)
            hang = h.begin()
            await clock.advance(30)
            h.overdue(hang)
            await clock.advance(5)
            h.finish(hang, Result.TIMEOUT, 35.0)
            await clock.advance(5)
            for _ in range(20):  # BAD every minute from 09:30:30
                h.finish(h.begin(), Result.REFUSED, 0.1)
                await clock.advance(60)
            assert (30, 45) == await h.opened()

    async def test_a_window_that_started_while_down_holds_at_the_restart(self, tmp_path):
        """BAD from 09:00:35 (deadline 09:15:35), a window from 09:14:40; the daemon is down
        from 09:14:35 to 09:16:40. At the restart the window's hold comes first: no incident
        inside the window (the targets used to be ticked first, declaring at once)."""
        clock = FakeClock()
        cfg = settings(tmp_path, maintenance=self.window(clock, 14 + 2 / 3, 60))
        async with EngineHarness(cfg, clock) as h:
            h.start()
            await every_minute(h, 14)
        await clock.advance(2 * 60 + 5)
        async with EngineHarness(cfg, clock) as again:
            again.start()
            await clock.advance(1)
            assert [] == await again.outbox()
            assert ["announcement", "started"] == await self.kinds(again)

    async def test_a_window_of_a_platform_gone_can_be_cancelled_not_moved(self, tmp_path):
        """After a reload dropped its platform, a window is still found: moving it is refused
        with the reason (it used to answer 'no maintenance'), cancelling works."""
        clock = FakeClock()
        async with EngineHarness(settings(tmp_path, maintenance=self.window(clock, 60, 90)),
                                 clock) as h:
            h.start()
            other = Settings(
                platforms={"us": {"incident_recipients": ["oncall@example.com"]}},
                targets=[{"name": "imap-us", "platform": "us", "type": "http",
                          "url": "http://x/"}],
                state={"path": tmp_path / "state.db"})
            h.maintenance.configure(build_topology(other, today=clock.now().date()))
            window = h.maintenance.get("DOVECOT-UPGRADE")
            with pytest.raises(Refused, match="no longer configured: maintenance "
                                              "dovecot-upgrade can only be cancelled"):
                h.maintenance.move(window.id, window.start, window.end + 60)
            assert "cancelled" == h.maintenance.cancel(window.id).state.value
            with pytest.raises(UnknownWindow, match="no maintenance 'nope'"):
                h.maintenance.cancel("nope")


class TestDeadlines:
    async def test_a_run_in_flight_at_the_deadline_that_answers_in_time(self, tmp_path):
        """Issue 8.5: BAD every minute from 09:00; a run from 09:14:50 is in flight at
        09:15 and answers in 10 s: no outage, no mail (it used to open an incident)."""
        async with EngineHarness(settings(tmp_path), FakeClock()) as h:
            for _ in range(14):
                h.finish(h.begin(), Result.REFUSED, 0.1)
                await h.clock.advance(60)
            await h.clock.advance(50)
            slow = h.begin()
            await h.clock.advance(10)  # 09:15:00: the deadline, the run still in flight
            assert [] == await h.outbox()
            h.finish(slow, Result.OK, 10.0)
            await h.clock.advance(3600)
            assert [] == await h.outbox()

    async def test_restart_after_a_deadline_nobody_watched_does_not_spin(self, tmp_path):
        """Issue 8.1: BAD runs at 09:01 and 09:02, then the daemon is down until 09:20: the
        deadline 09:16 passed with nobody watching. After the restart the clock can move on
        (the timer used to fire at the same past moment for ever)."""
        cfg, clock = settings(tmp_path), FakeClock()
        async with EngineHarness(cfg, clock) as h:
            await clock.advance(60)
            h.run()
            await clock.advance(60)
            h.run()
        await clock.advance(18 * 60)
        async with EngineHarness(cfg, clock) as again:
            again.start()
            await asyncio.wait_for(again.clock.advance(60), timeout=5)
            assert [] == await again.outbox()


class TestLedger:
    """Issue 13: what outlasts the samples, written with them: each sample's 5-minute
    rollup and its target's coverage (engine), each outage from declared to restored
    (desk)."""

    async def test_samples_make_rollups_and_coverage(self, tmp_path):
        async with EngineHarness(settings(tmp_path), FakeClock()) as h:
            o = h.origin  # 09:00 UTC: a bucket's start; runs at o + 35, o + 95...
            await every_minute(h, 5)  # 5 timeouts (35 s) in the first bucket
            await every_minute(h, 2, result=Result.OK, duration=0.2)
            await h.clock.advance(35)
            h.run(Result.OK, duration=40.0)  # slower than the threshold: BAD, no error
            await h.writer.flush()
            first, second = await h.store.rollups(["imap-eu"], o, o + 600)
            assert ((o, 5, 5, 35.0, 35.0, 35.0, {"timeout": 5})
                    == (first.bucket, first.runs, first.bad, first.p50, first.p95, first.max,
                        dict(first.errors)))
            assert ((o + 300, 3, 1, 0.2, 40.0, 40.0, {})
                    == (second.bucket, second.runs, second.bad, second.p50, second.p95,
                        second.max, dict(second.errors)))
            assert {"imap-eu": [(o + 35, o + 455 + 60)]} == await h.store.coverage(
                ["imap-eu"], o, o + 3600)

    async def test_a_gap_longer_than_a_run_opens_a_new_coverage_interval(self, tmp_path):
        """Runs late by less than interval + timeout extend the interval; the monitor down
        for longer leaves a blind gap."""
        async with EngineHarness(settings(tmp_path), FakeClock()) as h:
            o = h.origin
            h.run(Result.OK, duration=0.2)                 # sees [o, o + 60)
            await h.clock.advance(60 + 60 + 35)
            h.run(Result.OK, duration=0.2)                 # o + 155 <= 60 + 95: extends
            await h.clock.advance(60 + 60 + 36)
            h.run(Result.OK, duration=0.2)                 # o + 311 > 215 + 95: a gap
            await h.writer.flush()
            assert {"imap-eu": [(o, o + 215), (o + 311, o + 371)]} == await h.store.coverage(
                ["imap-eu"], o, o + 3600)

    async def test_a_restart_continues_the_bucket(self, tmp_path):
        """Restarted mid-bucket, the bucket's row counts the runs before and after, with
        exact percentiles (its samples are still stored), and coverage goes on."""
        cfg, clock = settings(tmp_path), FakeClock()
        async with EngineHarness(cfg, clock) as h:
            o = h.origin
            for duration in (1.0, 2.0):
                h.run(Result.OK, duration=duration)
                await clock.advance(60)
        async with EngineHarness(cfg, clock) as again:
            again.start()
            for duration in (3.0, 4.0):
                again.run(Result.OK, duration=duration)
                await clock.advance(60)
            await again.writer.flush()
            (row,) = await again.store.rollups(["imap-eu"], o, o + 300)
            assert (4, 2.0, 4.0, 4.0) == (row.runs, row.p50, row.p95, row.max)
            assert {"imap-eu": [(o, o + 240)]} == await again.store.coverage(
                ["imap-eu"], o, o + 3600)

    async def test_an_outage_is_kept_from_declared_to_restored(self, tmp_path):
        async with EngineHarness(settings(tmp_path), FakeClock()) as h:
            o = h.origin
            await every_minute(h, 16)
            (incident,) = await h.incidents()
            (span,) = await h.store.outages(["imap-eu"], o, o + 7200)
            assert ("imap-eu", "eu", o + 35, None, incident.id) == (
                span.target, span.platform, span.start, span.end, span.incident)
            await every_minute(h, 2, result=Result.OK, duration=0.2)
            (incident,) = await h.incidents()
            (span,) = await h.store.outages(["imap-eu"], o, o + 7200)
            assert incident.restored_at is not None
            assert (o + 35, incident.restored_at) == (span.start, span.end)

    async def test_a_removed_target_ends_its_outage_when_removed(self, tmp_path):
        async with EngineHarness(settings(tmp_path), FakeClock()) as h:
            await every_minute(h, 16)
            h.engine.forget("imap-eu")
            await h.writer.flush()
            (span,) = await h.store.outages(["imap-eu"], h.origin, h.origin + 7200)
            assert h.clock.now().timestamp() == span.end
            assert [5, 5, 5, 1] == [r.runs for r in await h.store.rollups(
                ["imap-eu"], h.origin, h.origin + 7200)]  # history stays

    async def test_housekeeping_prunes_rollups_and_keeps_history_by_default(self, tmp_path):
        """``state.keep_rollups`` bounds the rollups; with ``state.keep_history`` unset the
        outages and coverage stay for ever; set, they go too."""
        cfg = settings(tmp_path)
        async with EngineHarness(cfg, FakeClock()) as h:
            o = h.origin
            await every_minute(h, 16)
            await every_minute(h, 2, result=Result.OK, duration=0.2)
            later = o + 401 * 86400.0
            (incident,) = await h.store.incidents()
            thread = f"incident:{incident.id}"
            mails = await h.store.thread(thread)
            assert mails  # the OPEN, and the RESOLVED
            await h.store.apply(Changes(deliveries={  # as the drainer records them, sent
                EnvelopeKey(m.channel, thread, m.lane, m.number): Delivery(
                    EnvelopeKey(m.channel, thread, m.lane, m.number), "sent", 1, 0.0, None,
                    m.payload, sent_at=o + 1000) for m in mails}))
            h.writer.submit(pruning(cfg.state, later))
            await h.writer.flush()
            assert len(await h.store.thread(thread)) == len(mails)  # mails kept for ever...
            assert [] == await h.store.rollups(["imap-eu"], o, later)
            assert 1 == len(await h.store.outages(["imap-eu"], o, later))
            assert 1 == len((await h.store.coverage(["imap-eu"], o, later))["imap-eu"])
            kept = cfg.state.model_copy(update={"keep_history": timedelta(days=30)})
            h.writer.submit(pruning(kept, later))
            await h.writer.flush()
            assert [] == await h.store.outages(["imap-eu"], o, later)
            assert {"imap-eu": []} == await h.store.coverage(["imap-eu"], o, later)
            assert [] == await h.store.incidents_between(o, later)
            short = cfg.state.model_copy(update={"keep_mails": timedelta(days=400)})
            h.writer.submit(pruning(short, later))
            await h.writer.flush()
            assert [] == await h.store.thread(thread)  # ...unless state.keep_mails says
