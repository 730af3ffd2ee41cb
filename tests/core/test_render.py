from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from outagewatch.core.incidents import Book, Platform, Service, change, declared, restored, tick
from outagewatch.core.render import Observed, Thread, ThreadKind, render, span, when

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()
NEW_YORK = ZoneInfo("America/New_York")
EU = Platform("eu", (Service("imap-eu", impact="Users cannot read mail with their mail programs."),
                     Service("smtp-eu", impact="Users cannot send mail.")))


def mails(steps):
    out = []
    for _book, notes in steps:
        out += [render(n, EU, recipients=["oncall@example.com"],
                       observations=[Observed("imap-eu", T0 - 60, 35.0, "timeout", "login")])
                for n in notes]
    return out


def incident_story():
    steps = []
    book = Book()
    for step in (lambda b: declared(b, EU, "imap-eu", T0 - 900, T0),
                 lambda b: change(b, T0 + 600, etr=T0 + 7200),
                 lambda b: tick(b, EU, T0 + 600 + 3600),
                 lambda b: restored(b, EU, "imap-eu", T0 + 5000, T0 + 5100)):
        book, notes = step(book)
        steps.append((book, notes))
    return mails(steps)


class TestRender:
    def test_open_mail(self):
        """The first mail says what is down, the user impact, since when, the severity,
        that the ETR is unknown, and what the probes saw."""
        (first, *_rest) = incident_story()
        assert "Incident EU-20260302-0900 [OPEN] Sev 2 eu: imap-eu" == first.subject
        assert ("oncall@example.com",) == first.to
        for text in ("Users cannot read mail with their mail programs.",
                     "2026-03-02T08:45:00Z (Mon 02 Mar 2026 08:45 UTC)",
                     "Duration so far: 15 min",
                     "Severity 2: a business-critical component",
                     "Expected time to restoration: unknown",
                     "imap-eu: timeout in login after 35.0 s",
                     "update every 1 h"):
            assert text in first.body, text

    def test_thread(self):
        """Every mail is one of the incident's thread, numbered in order, under one stable
        subject stem (clients grouping by subject keep the thread too)."""
        mails = incident_story()
        assert {Thread(ThreadKind.INCIDENT, "EU-20260302-0900")} == {m.thread for m in mails}
        assert [0, 1, 2, 3] == [m.number for m in mails]
        assert ["open", "update", "update", "resolved"] == [m.kind for m in mails]
        stems = {m.subject.split(" [")[0] for m in mails}
        assert {"Incident EU-20260302-0900"} == stems

    def test_update_and_resolved(self):
        _, etr, periodic, resolved_mail = incident_story()
        assert "Expected time to restoration: 2026-03-02T11:00:00Z" in etr.body
        assert "(expected time to restoration set)" in etr.body
        assert "(periodic update)" in periodic.body
        assert "[RESOLVED]" in resolved_mail.subject
        assert "Restored:       2026-03-02T10:23:20Z" in resolved_mail.body
        assert "Total duration: 1 h 38 min" in resolved_mail.body

    def test_operator_templates(self):
        _, (notice,) = declared(Book(), EU, "smtp-eu", T0 - 900, T0)
        mail = render(notice, EU, recipients=["a@example.com"],
                      templates={"subject": "DOWN $services ($id)",
                                 "open": "$platform: $impacts\nunknown: $nonsense"})
        assert "DOWN smtp-eu (EU-20260302-0900)" == mail.subject
        assert "eu: - smtp-eu: Users cannot send mail." in mail.body
        assert "$nonsense" in mail.body  # unknown placeholders stay visible, never crash


def test_readable_times():
    assert "2026-03-02T09:00:00Z (Mon 02 Mar 2026 09:00 UTC)" == when(T0)
    assert ["45 s", "1 min", "2 h 5 min", "3 d 1 h"] == [
        span(45), span(60), span(7500), span(3 * 86400 + 3600)]


class TestMaintenanceMails:
    def lifecycle(self, bad=frozenset()):
        from outagewatch.core.maintenance import Calendar, Window, WindowKind, register
        from outagewatch.core.maintenance import tick as mtick

        start = datetime(2026, 6, 12, 20, 0, tzinfo=UTC).timestamp()
        window = Window(id="EU-M-2026-0001", platform="eu", targets=("imap-eu", "pop3-eu"),
                        start=start, end=start + 4 * 3600, kind=WindowKind.PLANNED,
                        description="Dovecot upgrade to 2.4.", impact="Short interruptions.",
                        registered_at=0.0)
        window, mails = register(window, now=start - 5 * 86400, calendar=Calendar())
        window, more = mtick(window, now=start)
        mails += more
        window, more = mtick(window, now=start + 4 * 3600, bad=bad)
        mails += more
        from outagewatch.core.render import render_maintenance

        return [render_maintenance(m, recipients=["info@example.com"]) for m in mails]

    def test_announcement_started_finished(self):
        announced, started, finished = self.lifecycle()
        assert ("Maintenance EU-M-2026-0001 [ANNOUNCEMENT] planned eu: imap-eu, pop3-eu, "
                "2026-06-12 20:00Z") == announced.subject
        assert ("info@example.com",) == announced.to
        for text in ("Planned time: 2026-06-12T20:00:00Z", "(4 h)",
                     "Expected impact: Short interruptions.", "Dovecot upgrade to 2.4."):
            assert text in announced.body, text
        assert "has started" in started.body
        assert "finished: successful" in finished.body
        assert [Thread(ThreadKind.MAINTENANCE, "EU-M-2026-0001")] * 3 == [
            m.thread for m in (announced, started, finished)]
        assert [0, 1, 2] == [m.number for m in (announced, started, finished)]

    def test_finished_with_problems_names_them(self):
        *_, finished = self.lifecycle(bad=frozenset({"pop3-eu"}))
        assert "completed with problems: not answering normally at its end: pop3-eu" in \
            finished.body


class TestReadsRight:
    """Mails that read right: a slow answer is slow, times in the platform's own zone."""

    def test_a_slow_answer_is_not_ok(self):
        _, [notice] = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        body = render(notice, EU, recipients=["a@b.c"], observations=[
            Observed("imap-eu", T0 - 60, 5.0, "ok", None, "", 3.0),
            Observed("imap-eu", T0 - 120, 0.2, "ok", None, "", 3.0)]).body
        assert "imap-eu: slow: 5.0 s (threshold 3 s)" in body
        assert "imap-eu: ok after 0.2 s" in body
        assert "ok after 5.0" not in body

    def test_times_in_the_platform_zone_beside_utc(self):
        us = Platform("us", (Service("imap-us"),), zone=NEW_YORK)
        evening = datetime(2026, 12, 16, 3, 0, tzinfo=UTC).timestamp()
        assert when(evening, NEW_YORK) == (
            "2026-12-16T03:00:00Z (Tue 15 Dec 2026 22:00 EST, Wed 16 Dec 2026 03:00 UTC)")
        _, [notice] = declared(Book(), us, "imap-us", evening, evening + 900)
        body = render(notice, us, recipients=["a@b.c"], observations=[
            Observed("imap-us", evening + 840, 31.0, "timeout", "login")]).body
        assert "Since:          2026-12-16T03:00:00Z (Tue 15 Dec 2026 22:00 EST" in body
        assert "- 22:14:00 EST (03:14:00Z) imap-us: timeout in login after 31.0 s" in body

    def test_maintenance_in_the_platform_zone_and_no_empty_lines(self):
        from outagewatch.core.maintenance import Calendar, Window, WindowKind, register
        from outagewatch.core.render import render_maintenance

        start = datetime(2026, 12, 16, 3, 0, tzinfo=UTC).timestamp()
        window = Window(id="US-1", platform="us", targets=("imap-us",), start=start,
                        end=start + 3600, kind=WindowKind.PLANNED, description="",
                        impact="", registered_at=0.0)
        _, [mail] = register(window, now=start - 10 * 86400, calendar=Calendar())
        message = render_maintenance(mail, recipients=["i@b.c"], zone=NEW_YORK)
        assert message.subject.endswith("imap-us, 2026-12-15 22:00 EST (2026-12-16 03:00Z)")
        assert "Planned time: 2026-12-16T03:00:00Z (Tue 15 Dec 2026 22:00 EST" in message.body
        assert "Expected impact" not in message.body
        assert "\n\n\n" not in message.body
        assert message.body == (
            "We will carry out planned maintenance on platform us.\n\n"
            "Planned time: 2026-12-16T03:00:00Z (Tue 15 Dec 2026 22:00 EST, Wed 16 Dec 2026 "
            "03:00 UTC) to 2026-12-16T04:00:00Z (Tue 15 Dec 2026 23:00 EST, Wed 16 Dec 2026 "
            "04:00 UTC) (1 h)\nAffected services: imap-us\n\n"
            "We will send a mail when it starts and when it is finished.\nMaintenance US-1\n")
