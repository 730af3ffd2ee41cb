"""Incidents on simulated time: the exact sequence and timing of notifications."""

from __future__ import annotations

from datetime import UTC, datetime

from outagewatch.core.incidents import (
    Book,
    Kind,
    Platform,
    Service,
    change,
    declared,
    next_deadline,
    restored,
    severity,
    tick,
)
from outagewatch.core.render import render

H = 3600.0
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()
EU = Platform("eu", (Service("webmail-eu"), Service("smtp-eu"), Service("imap-eu"),
                     Service("pop3-eu", critical=False)), update_interval=H)


def simulate(events, *, until, platform=EU, book=None):
    """Feed (offset, 'down'|'up', service) events, firing the update timer in between, as
    the daemon does; return (kind, offset, severity, affected, number, reasons) rows."""
    book = book or Book()
    rows: list[tuple] = []

    def take(step):
        nonlocal book
        book, notes = step
        rows.extend((n.kind.value, n.at - T0, n.incident.severity,
                     ",".join(sorted(n.incident.affected)), n.number, n.reasons)
                    for n in notes)

    for offset, what, service in [*events, (until, "end", "")]:
        while (deadline := next_deadline(book, platform)) is not None \
                and deadline <= T0 + offset:
            take(tick(book, platform, deadline))
        if what == "down":
            take(declared(book, platform, service, T0 + offset - 900, T0 + offset))
        elif what == "up":
            take(restored(book, platform, service, T0 + offset - 60, T0 + offset))
    return rows, book


def kinds(rows):
    return [(r[0], r[1]) for r in rows]


class TestSeverity:
    def test_levels(self):
        assert 2 == severity(EU, frozenset({"imap-eu"}))
        assert 3 == severity(EU, frozenset({"pop3-eu"}))
        assert 1 == severity(EU, frozenset({"webmail-eu", "smtp-eu", "imap-eu", "pop3-eu"}))


class TestSingleServiceOutage:
    def test_open_hourly_updates_resolved(self):
        """OPEN at declaration, an UPDATE every hour after the previous mail, RESOLVED."""
        rows, book = simulate([(0, "down", "imap-eu"), (3.5 * H, "up", "imap-eu")],
                              until=5 * H)
        assert [("open", 0), ("update", H), ("update", 2 * H), ("update", 3 * H),
                ("resolved", 3.5 * H)] == kinds(rows)
        assert [0, 1, 2, 3, 4] == [r[4] for r in rows]
        assert book.open is None

    def test_resolved_carries_restore_time_and_duration(self):
        book = Book()
        book, _ = declared(book, EU, "imap-eu", T0 - 900, T0)
        book, (note,) = restored(book, EU, "imap-eu", T0 + 1800, T0 + 1860)
        assert Kind.RESOLVED == note.kind
        assert T0 + 1800 == note.incident.restored_at
        assert 2700 == note.incident.duration
        assert T0 + 1860 == note.incident.resolved_at

    def test_id_is_readable_and_never_handed_out_twice(self):
        """Issue 10.5: ids come from the minute of the declaration (UTC), so a lost state
        cannot give a new incident an old id; a second one in the same minute is -2."""
        book = Book()
        book, (notice,) = declared(book, EU, "imap-eu", T0, T0)
        assert "EU-20260302-0900" == notice.incident.id
        book, _ = restored(book, EU, "imap-eu", T0 + 10, T0 + 10)
        book, (notice,) = declared(book, EU, "smtp-eu", T0 + 20, T0 + 20)
        assert "EU-20260302-0900-2" == notice.incident.id
        book, _ = restored(book, EU, "smtp-eu", T0 + 30, T0 + 30)
        book, (notice,) = declared(book, EU, "smtp-eu", T0 + 40, T0 + 40)
        assert "EU-20260302-0900-3" == notice.incident.id
        _, (notice,) = declared(Book(), EU, "imap-eu", T0 + 3600, T0 + 3600)
        assert "EU-20260302-1000" == notice.incident.id  # no 0001 again after a lost state


class TestPlatformWide:
    def test_services_join_and_severity_rises_to_1(self):
        """Each service joining is an UPDATE at once; all four down is severity 1."""
        rows, _ = simulate([(0, "down", "pop3-eu"), (600, "down", "imap-eu"),
                            (900, "down", "smtp-eu"), (1200, "down", "webmail-eu")],
                           until=1300)
        assert [("open", 0, 3), ("update", 600, 2), ("update", 900, 2),
                ("update", 1200, 1)] == [(r[0], r[1], r[2]) for r in rows]
        assert ("imap-eu down", "severity 3 -> 2") == rows[1][5]
        assert ("webmail-eu down", "severity 2 -> 1") == rows[3][5]

    def test_update_cadence_restarts_after_every_mail(self):
        """The hourly update counts from the previous mail, whatever caused it."""
        rows, _ = simulate([(0, "down", "imap-eu"), (1800, "down", "smtp-eu")], until=4 * H)
        assert [("open", 0), ("update", 1800), ("update", 1800 + H),
                ("update", 1800 + 2 * H), ("update", 1800 + 3 * H)] == kinds(rows)


class TestJoiningAndLeaving:
    def test_partial_recovery_then_resolution(self):
        rows, _ = simulate([(0, "down", "imap-eu"), (300, "down", "pop3-eu"),
                            (1200, "up", "imap-eu"), (2000, "up", "pop3-eu")], until=3 * H)
        assert [("open", 0, 2, "imap-eu"), ("update", 300, 2, "imap-eu,pop3-eu"),
                ("update", 1200, 3, "pop3-eu"), ("resolved", 2000, 3, "")] == [
            r[:4] for r in rows]
        assert ("imap-eu restored", "severity 2 -> 3") == rows[2][5]

    def test_rejoining_service(self):
        rows, _ = simulate([(0, "down", "imap-eu"), (60, "down", "smtp-eu"),
                            (120, "up", "smtp-eu"), (180, "down", "smtp-eu")], until=200)
        assert ["open", "update", "update", "update"] == [r[0] for r in rows]
        assert "imap-eu,smtp-eu" == rows[-1][3]

    def test_unknown_recovery_and_duplicate_declaration_are_ignored(self):
        rows, _ = simulate([(0, "down", "imap-eu"), (10, "down", "imap-eu"),
                            (20, "up", "smtp-eu")], until=30)
        assert [("open", 0)] == kinds(rows)

    def test_flapping_gives_separate_incidents(self):
        events = []
        for i in range(3):
            events += [(i * 2 * H, "down", "imap-eu"), (i * 2 * H + 600, "up", "imap-eu")]
        rows, book = simulate(events, until=7 * H)
        assert ["open", "resolved"] * 3 == [r[0] for r in rows]
        assert "EU-20260302-1300" == book.last_id


class TestLongOutages:
    def test_two_days(self):
        """An outage over two days sends 48 hourly updates, numbered in one thread."""
        rows, _ = simulate([(0, "down", "webmail-eu"), (48 * H + 1, "up", "webmail-eu")],
                           until=49 * H)
        assert 1 + 48 + 1 == len(rows)
        assert [r[4] for r in rows] == list(range(50))
        assert all(r[0] == "update" and r[1] == i * H for i, r in enumerate(rows[1:-1], 1))

    def test_late_tick_sends_one_update_not_a_burst(self):
        """After five hours without a tick (daemon stopped) one UPDATE goes out, then the
        cadence continues from it."""
        book, _ = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        book, notes = tick(book, EU, T0 + 5 * H)
        assert 1 == len(notes)
        assert T0 + 6 * H == next_deadline(book, EU)


class TestOperatorChanges:
    def test_etr_and_interval_send_an_update_at_once(self):
        book, _ = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        book, (notice,) = change(book, T0 + 600, etr=T0 + 2 * H)
        assert (Kind.UPDATE, T0 + 2 * H) == (notice.kind, notice.incident.etr)
        book, (notice,) = change(book, T0 + 700, interval=1800)
        assert T0 + 700 + 1800 == next_deadline(book, EU)
        assert [] == change(book, T0 + 800, etr=T0 + 2 * H)[1]  # unchanged: no mail

    def test_one_change_is_one_mail(self):
        """ETR, interval and a note in one request: one UPDATE naming all three."""
        book, _ = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        book, (notice,) = change(book, T0 + 600, etr=T0 + 2 * H, interval=1800,
                                 note="Storage vendor engaged.")
        assert ("expected time to restoration set", "updates every 1800 s from now on",
                "note from the operators") == notice.reasons
        assert (T0 + 2 * H, 1800, 2) == (notice.incident.etr, notice.incident.update_interval,
                                         notice.incident.mails)

    def test_note_is_mailed_at_once(self):
        book, _ = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        book, (notice,) = change(book, T0 + 300, note="  Storage vendor engaged.  ")
        assert (Kind.UPDATE, ((T0 + 300, "Storage vendor engaged."),)) == (
            notice.kind, notice.incident.notes)
        assert [] == change(book, T0 + 400, note="   ")[1]

    def test_nothing_to_change_without_an_incident(self):
        assert (Book(), []) == change(Book(), T0, etr=T0)
        assert (Book(), []) == tick(Book(), EU, T0)
        assert next_deadline(Book(), EU) is None


class TestRestoreTime:
    def test_the_latest_restore_wins_not_the_last_recognised(self):
        """Issue 8.3: imap-eu (every 60 s) back at 1620, recognised at 1680.2; smtp-eu (every
        300 s) back at 1500, recognised at 1800.2. Restored at 1620 (00:27), 27 min in all,
        not at 1500 (00:25) as the last recognition said."""
        book, _ = declared(Book(), EU, "imap-eu", T0, T0 + 900)
        book, _ = declared(book, EU, "smtp-eu", T0, T0 + 1200)
        book, _ = restored(book, EU, "imap-eu", T0 + 1620, T0 + 1680.2)
        book, (notice,) = restored(book, EU, "smtp-eu", T0 + 1500, T0 + 1800.2)
        assert Kind.RESOLVED == notice.kind
        assert T0 + 1620 == notice.incident.restored_at
        assert 1620 == notice.incident.duration



class TestCoalescing:
    """Issue 10.11: a platform going down at once is one OPEN and one UPDATE, not one mail
    per service (1,000 targets down gave 1 OPEN and 999 UPDATEs in 54 s)."""

    BIG = Platform("eu", tuple(Service(f"svc-{i:04d}") for i in range(1000)),
                   update_interval=H, coalesce=5.0)

    def down(self, spacing):
        book, mails = Book(), []
        for i in range(1000):
            at = T0 + i * spacing
            while (deadline := next_deadline(book, self.BIG)) is not None and deadline <= at:
                book, out = tick(book, self.BIG, deadline)
                mails += out
            book, out = declared(book, self.BIG, f"svc-{i:04d}", at - 900, at)
            mails += out
        last = next_deadline(book, self.BIG)
        assert last is not None
        book, out = tick(book, self.BIG, last)
        return mails + out

    def test_a_thousand_services_down_in_seconds_are_two_mails(self):
        mails = self.down(0.003)
        assert [Kind.OPEN, Kind.UPDATE] == [m.kind for m in mails]
        update = mails[1]
        assert 1 == update.incident.severity  # every service down
        message = render(update, self.BIG, recipients=["a@example.com"])
        assert "svc-0000, svc-0001, svc-0002 and 997 more" in message.subject
        assert len(message.subject) < 120
        assert "999 services down: svc-0001, svc-0002, svc-0003 and 996 more" in message.body
        assert "- and 980 more services" in message.body
        assert len(message.body) < 10_000

    def test_a_thousand_services_down_over_a_minute_are_a_mail_per_five_seconds(self):
        """The issue's 54 s: one UPDATE per 5 s of joins, 12 mails in all, not 1,000."""
        mails = self.down(0.054)
        assert 12 == len(mails)
        assert all(len(render(m, self.BIG, recipients=["a@x"]).subject) < 120 for m in mails)

    def test_changes_close_together_are_one_update(self):
        eu = Platform("eu", EU.services, update_interval=H, coalesce=5.0)
        book, _ = declared(Book(), eu, "imap-eu", T0 - 900, T0)
        book, none = declared(book, eu, "smtp-eu", T0 - 800, T0 + 60)
        assert [] == none
        assert T0 + 65 == next_deadline(book, eu)
        book, _ = declared(book, eu, "pop3-eu", T0 - 700, T0 + 62)
        book, (update,) = tick(book, eu, T0 + 65)
        assert ("smtp-eu down", "pop3-eu down") == update.reasons
        assert T0 + 65 + H == next_deadline(book, eu)

    def test_an_update_just_before_the_resolved_is_one_resolved(self):
        """Issue 12's "an UPDATE immediately followed by the RESOLVED mail is one
        RESOLVED": the change not mailed yet goes with it."""
        eu = Platform("eu", EU.services, update_interval=H, coalesce=5.0)
        book, _ = declared(Book(), eu, "imap-eu", T0 - 900, T0)
        book, _ = declared(book, eu, "smtp-eu", T0 - 800, T0 + 60)
        book, _ = tick(book, eu, T0 + 65)
        book, none = restored(book, eu, "imap-eu", T0 + 100, T0 + 101)
        assert [] == none
        book, (resolved_mail,) = restored(book, eu, "smtp-eu", T0 + 101, T0 + 102)
        assert Kind.RESOLVED == resolved_mail.kind
        assert ("imap-eu restored", "smtp-eu restored") == resolved_mail.reasons

    def test_an_operator_change_goes_at_once_with_what_was_collected(self):
        eu = Platform("eu", EU.services, update_interval=H, coalesce=5.0)
        book, _ = declared(Book(), eu, "imap-eu", T0 - 900, T0)
        book, _ = declared(book, eu, "smtp-eu", T0 - 800, T0 + 60)
        book, (update,) = change(book, T0 + 61, note="Storage vendor engaged.")
        assert ("smtp-eu down", "note from the operators") == update.reasons
        assert T0 + 61 + H == next_deadline(book, eu)
