"""The monitor on a fake clock: samples to verdicts to incidents to the outbox."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from prometheus_client import CollectorRegistry
from tests.helpers.fakeclock import FakeClock

from outagewatch.config import Settings
from outagewatch.metrics import TargetLabels, build_metrics
from outagewatch.model import ProbeType, Result, Sample
from outagewatch.monitor import Monitor
from outagewatch.store import Store


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


class Harness:
    def __init__(self, cfg, clock=None):
        self.clock = clock or FakeClock()
        self.cfg = cfg
        self.store = Store(cfg.state.path)
        self.registry = CollectorRegistry()
        metrics = build_metrics(self.registry, buckets=(1.0,))
        metrics.add_target(TargetLabels("imap-eu", ProbeType.HTTP, "eu"))
        self.monitor = Monitor(store=self.store, clock=self.clock, metrics=metrics,
                               settings=cfg)
        self.target = cfg.targets[0]
        self.rule = cfg.rule_for(self.target)
        self.origin = FakeClock().now().timestamp()

    def run(self, result=Result.TIMEOUT, duration=35.0):
        sample = Sample("imap-eu", self.clock.now(), duration, result)
        self.monitor.record(self.target, self.rule, sample)

    def begin(self):
        """A run starts now, as the scheduler reports it; returns its start."""
        started_at = self.clock.now()
        self.monitor.started(self.target, self.rule, started_at)
        return started_at

    def finish(self, started_at, result=Result.OK, duration=0.2):
        sample = Sample("imap-eu", started_at, duration, result)
        self.monitor.record(self.target, self.rule, sample)

    def opened(self):
        """(started_at, opened_at) of the incident, in minutes since the clock's start."""
        (incident,) = self.store.incidents()
        origin = self.origin
        return ((incident.started_at - origin) / 60, (incident.opened_at - origin) / 60)

    def outbox(self):
        return [(m["kind"], m["number"]) for i in self.store.incidents()
                for m in self.store.mails(i.id)]

    def maintenance_mails(self, window_id):
        return [m["kind"] for m in self.store.mails(window_id)]


async def every_minute(h, minutes, **kw):
    for _ in range(minutes):
        await h.clock.advance(35)
        h.run(**kw)
        await h.clock.advance(25)


class TestMonitor:
    async def test_declared_by_the_timer_and_mailed(self, tmp_path):
        """The outage is declared at streak start + 900 s by the timer, and its OPEN mail
        is in the outbox at once."""
        h = Harness(settings(tmp_path))
        start = h.clock.now()
        await every_minute(h, 14)
        assert [] == h.outbox()
        await h.clock.advance(100)  # past 35 + 900 s, with no run in between
        assert [("open", 0)] == h.outbox()
        (incident,) = h.store.incidents()
        assert start.timestamp() + 35 == incident.started_at  # the first BAD run's start
        assert start.timestamp() + 935 == incident.opened_at  # the timer, to the second
        assert 1 == h.registry.get_sample_value(
            "outagewatch_target_outage", {"target": "imap-eu", "type": "http",
                                          "platform": "eu"})

    async def test_cadence_survives_a_restart(self, tmp_path):
        """Restarted 20 min after the OPEN mail, the next UPDATE comes 60 min after it, not
        at once and not twice."""
        cfg = settings(tmp_path)
        h = Harness(cfg)
        await every_minute(h, 16)
        assert [("open", 0)] == h.outbox()
        opened = h.store.incidents()[0].last_mail_at
        h.monitor.close()
        h.store.close()
        await h.clock.advance(20 * 60)
        again = Harness(cfg, clock=h.clock)
        again.monitor.start()
        assert [("open", 0)] == again.outbox()
        await every_minute(again, 39)
        assert [("open", 0)] == again.outbox()
        await every_minute(again, 2)
        assert [("open", 0), ("update", 1)] == again.outbox()
        assert opened + 3600 == again.store.incidents()[0].last_mail_at

    async def test_recovery_resolves(self, tmp_path):
        h = Harness(settings(tmp_path))
        await every_minute(h, 16)
        await every_minute(h, 2, result=Result.OK, duration=0.2)
        assert [("open", 0), ("resolved", 1)] == h.outbox()

    async def test_removed_target_cannot_hold_an_incident_open(self, tmp_path):
        """A target dropped by a reload while in an incident leaves it: here the last one,
        so the incident resolves instead of staying open for ever."""
        h = Harness(settings(tmp_path))
        await every_minute(h, 16)
        h.monitor.forget("imap-eu")
        assert [("open", 0), ("resolved", 1)] == h.outbox()

    async def test_operator_templates(self, tmp_path):
        templates = tmp_path / "templates"
        templates.mkdir()
        (templates / "subject.txt").write_text("DOWN: $services ($id)\n")
        h = Harness(settings(tmp_path, templates=templates))
        await every_minute(h, 16)
        (incident,) = h.store.incidents()
        (mail,) = h.store.mails(incident.id)
        assert f"DOWN: imap-eu ({incident.id})" == mail["subject"]
        assert [] == [m for m in h.store.due_mails(1e12) if "Users cannot read mail." not in
                      m.body]


class TestMaintenance:
    """The fake clock starts on Monday 2026-03-02 09:00 UTC."""

    def window(self, clock, start_min, end_min, kind="emergency"):
        base = clock.now()
        return {"windows": [{"id": "dovecot-upgrade", "platform": "eu", "kind": kind,
                             "targets": ["imap-eu"],
                             "start": (base + timedelta(minutes=start_min)).isoformat(),
                             "end": (base + timedelta(minutes=end_min)).isoformat(),
                             "impact": "IMAP unavailable"}]}

    async def test_window_hides_an_outage_and_the_streak_counts_from_its_end(self, tmp_path):
        """BAD from minute 0 to 60 inside a window from 5 to 30: ANNOUNCEMENT, STARTED,
        FINISHED with problems, and the OPEN only at the window's end + 15 min."""
        clock = FakeClock()
        cfg = settings(tmp_path, maintenance=self.window(clock, 5, 30))
        h = Harness(cfg, clock=clock)
        h.monitor.start()
        assert ["announcement"] == h.maintenance_mails("dovecot-upgrade")
        await every_minute(h, 29)
        assert ["announcement", "started"] == h.maintenance_mails("dovecot-upgrade")
        assert [] == h.outbox()
        assert 1 == h.registry.get_sample_value(
            "outagewatch_maintenance_active",
            {"target": "imap-eu", "type": "http", "platform": "eu"})
        await every_minute(h, 15)
        mails = h.store.mails("dovecot-upgrade")
        assert ["announcement", "started", "finished"] == [m["kind"] for m in mails]
        assert [] == h.outbox()  # 44 min in: still inside end + window
        await every_minute(h, 2)
        assert [("open", 0)] == h.outbox()
        (incident,) = h.store.incidents()
        window_end = clock.now().timestamp() - 46 * 60 + 30 * 60
        assert window_end == incident.started_at  # the streak counts from the window's end
        finished = mails[-1]
        assert "completed with problems: not answering normally at its end: imap-eu" in \
            finished["body"]
        assert ["info@example.com"] == finished["recipients"]

    async def test_good_at_the_end_is_successful(self, tmp_path):
        clock = FakeClock()
        h = Harness(settings(tmp_path, maintenance=self.window(clock, 1, 5)), clock=clock)
        h.monitor.start()
        await every_minute(h, 8, result=Result.OK, duration=0.2)
        finished = [m for m in h.store.mails("dovecot-upgrade") if m["kind"] == "finished"]
        assert 1 == len(finished)
        assert "finished: successful" in finished[0]["body"]

    async def test_planned_without_notice_is_refused(self, tmp_path):
        """Planned for Wednesday, registered on Monday: refused, nothing announced."""
        clock = FakeClock()
        cfg = settings(tmp_path, maintenance=self.window(clock, 2 * 24 * 60, 2 * 24 * 60 + 60,
                                                         kind="planned"))
        h = Harness(cfg, clock=clock)
        h.monitor.start()
        assert [] == h.maintenance_mails("dovecot-upgrade")

    async def test_incident_open_before_the_window_goes_on(self, tmp_path):
        """Declared at 15 min; a window from 20 to 90 min does not close it or stop its
        hourly UPDATE."""
        clock = FakeClock()
        h = Harness(settings(tmp_path, maintenance=self.window(clock, 20, 90)), clock=clock)
        h.monitor.start()
        await every_minute(h, 80)
        assert [("open", 0), ("update", 1)] == h.outbox()
        assert 1 == h.registry.get_sample_value(
            "outagewatch_target_outage", {"target": "imap-eu", "type": "http",
                                          "platform": "eu"})

    async def test_cancelled_window_releases_the_hold(self, tmp_path):
        """Issue 8.2: BAD from 09:00 under an emergency window 09:05-12:00, cancelled at
        09:30: the outage starts at 09:30 and its OPEN goes at 09:45 (it was 12:15)."""
        clock = FakeClock()
        h = Harness(settings(tmp_path, maintenance=self.window(clock, 5, 180)), clock=clock)
        h.monitor.start()
        await every_minute(h, 30)
        h.monitor.cancel_window("dovecot-upgrade")
        await every_minute(h, 14)
        assert [] == h.outbox()
        await every_minute(h, 2)
        assert (30, 45) == h.opened()

    async def test_shortened_window_releases_the_hold_at_its_new_end(self, tmp_path):
        """Issue 8.2: the end moved to 09:35 at 09:30: OPEN at 09:50, counted from 09:35."""
        clock = FakeClock()
        h = Harness(settings(tmp_path, maintenance=self.window(clock, 5, 180)), clock=clock)
        h.monitor.start()
        await every_minute(h, 30)
        window = h.monitor.windows()[0]
        h.monitor.move_window(window.id, window.start, h.origin + 35 * 60)
        await every_minute(h, 22)
        assert (35, 50) == h.opened()

    async def test_a_run_straddling_the_end_counts_from_the_end(self, tmp_path):
        """Issue 8.4: window 09:05-09:30; a GOOD run at 09:25; a hang from 09:29:50 becomes
        BAD at 09:30:20 (its threshold). The OPEN is at 09:45:00, counted from 09:30."""
        clock = FakeClock()
        h = Harness(settings(tmp_path, maintenance=self.window(clock, 5, 30)), clock=clock)
        h.monitor.start()
        await clock.advance(25 * 60)
        h.finish(h.begin())
        await clock.advance(4 * 60 + 50)
        hang = h.begin()
        await clock.advance(30)
        h.monitor.overdue(h.target, h.rule, hang)
        await clock.advance(5)
        h.finish(hang, Result.TIMEOUT, 35.0)
        await clock.advance(5)
        for _ in range(20):  # BAD every minute from 09:30:30
            h.finish(h.begin(), Result.REFUSED, 0.1)
            await clock.advance(60)
        assert (30, 45) == h.opened()


class TestDeadlines:
    async def test_a_run_in_flight_at_the_deadline_that_answers_in_time(self, tmp_path):
        """Issue 8.5: BAD every minute from 09:00; a run from 09:14:50 is in flight at
        09:15 and answers in 10 s: no outage, no mail (it used to open an incident)."""
        h = Harness(settings(tmp_path))
        for _ in range(14):
            h.finish(h.begin(), Result.REFUSED, 0.1)
            await h.clock.advance(60)
        await h.clock.advance(50)
        slow = h.begin()
        await h.clock.advance(10)  # 09:15:00: the deadline, the run still in flight
        assert [] == h.outbox()
        h.finish(slow, Result.OK, 10.0)
        await h.clock.advance(3600)
        assert [] == h.outbox()

    async def test_restart_after_a_deadline_nobody_watched_does_not_spin(self, tmp_path):
        """Issue 8.1: BAD runs at 09:01 and 09:02, then the daemon is down until 09:20: the
        deadline 09:16 passed with nobody watching. After the restart the clock can move on
        (the timer used to fire at the same past moment for ever)."""
        cfg = settings(tmp_path)
        h = Harness(cfg)
        await h.clock.advance(60)
        h.run()
        await h.clock.advance(60)
        h.run()
        h.monitor.close()
        h.store.close()
        await h.clock.advance(18 * 60)
        again = Harness(cfg, clock=h.clock)
        again.monitor.start()
        await asyncio.wait_for(again.clock.advance(60), timeout=5)
        assert [] == again.outbox()

