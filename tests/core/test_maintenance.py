"""Maintenance windows: business days, the notice rule, and the lifecycle's mails."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outagewatch.core.maintenance import (
    Calendar,
    MailKind,
    Refused,
    Window,
    WindowKind,
    WindowState,
    cancel,
    hold_until,
    move,
    next_deadline,
    register,
    tick,
)

BERLIN = ZoneInfo("Europe/Berlin")
BY = holidays.country_holidays("DE", subdiv="BY", years=range(2025, 2029))
CAL = Calendar(zone=BERLIN, holidays=frozenset(BY))


def at(text: str, zone=BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def window(start: str, end: str, *, kind=WindowKind.PLANNED, targets=("imap-eu",)):
    return Window(id="EU-M-1", platform="eu", targets=targets, start=at(start), end=at(end),
                  kind=kind, description="Dovecot upgrade", impact="IMAP unavailable",
                  registered_at=0.0)


class TestBusinessDays:
    def test_christmas_example(self):
        """Monday 2026-12-28 in Bavaria: announce by Tuesday the 22nd (25th, 26th and the
        weekend do not count)."""
        assert date(2026, 12, 22) == CAL.announce_by(date(2026, 12, 28), 3)

    @settings(max_examples=400, deadline=None)
    @given(st.dates(min_value=date(2025, 2, 1), max_value=date(2028, 11, 30)),
           st.integers(1, 10))
    def test_agrees_with_the_holidays_package(self, day, notice):
        assert BY.get_nth_working_day(day, -notice) == CAL.announce_by(day, notice)

    def test_closure_days_and_weekends(self):
        closed = Calendar(zone=UTC, closures=frozenset({date(2026, 6, 10)}))
        assert date(2026, 6, 8) == closed.announce_by(date(2026, 6, 12), 3)  # Fri -> Mon
        assert date(2026, 6, 5) == closed.announce_by(date(2026, 6, 11), 3)  # Thu -> Fri

    def test_local_date_decides(self):
        """23:30 on Monday in Berlin is Monday there, though it is Monday 21:30 UTC; 00:30
        on Tuesday in Berlin is still Monday in UTC but counts as Tuesday."""
        assert date(2026, 6, 8) == CAL.local_date(at("2026-06-08T23:30"))
        assert date(2026, 6, 9) == CAL.local_date(at("2026-06-09T00:30"))


class TestNotice:
    def test_planned_with_enough_notice_is_announced(self):
        w, (mail,) = register(window("2026-06-12T22:00", "2026-06-13T02:00"),
                              now=at("2026-06-09T17:00"), calendar=CAL)
        assert (MailKind.ANNOUNCEMENT, 0, WindowState.SCHEDULED) == (mail.kind, mail.number,
                                                                     w.state)

    def test_planned_too_late_is_refused_with_the_dates(self):
        with pytest.raises(Refused) as info:
            register(window("2026-06-12T22:00", "2026-06-13T02:00"),
                     now=at("2026-06-10T08:00"), calendar=CAL)
        assert ("planned maintenance must be announced 3 business days ahead: for a start "
                "on Fri 2026-06-12 announce by Tue 2026-06-09, and it is Wed 2026-06-10; "
                "register it as an emergency if it cannot wait") == str(info.value)

    def test_registered_late_evening_counts_by_local_date(self):
        """Tuesday 23:30 in Berlin is still Tuesday: in time for Friday."""
        register(window("2026-06-12T22:00", "2026-06-13T02:00"),
                 now=at("2026-06-09T23:30"), calendar=CAL)
        with pytest.raises(Refused):
            register(window("2026-06-12T22:00", "2026-06-13T02:00"),
                     now=at("2026-06-10T00:10"), calendar=CAL)

    def test_emergency_any_time(self):
        w, (mail,) = register(window("2026-06-10T08:30", "2026-06-10T09:30",
                                     kind=WindowKind.EMERGENCY),
                              now=at("2026-06-10T08:20"), calendar=CAL)
        assert MailKind.ANNOUNCEMENT == mail.kind
        assert WindowKind.EMERGENCY == w.kind

    @pytest.mark.parametrize(("start", "end", "message"), [
        ("2026-06-20T02:00", "2026-06-20T01:00", "the end must be after the start"),
        ("2026-06-01T01:00", "2026-06-01T02:00", "the window is over already"),
    ])
    def test_bad_times(self, start, end, message):
        with pytest.raises(Refused, match=message):
            register(window(start, end, kind=WindowKind.EMERGENCY), now=at("2026-06-10T08:00"),
                     calendar=CAL)


class TestLifecycle:
    def setup(self, start="2026-06-12T22:00", end="2026-06-13T02:00"):
        w, _ = register(window(start, end), now=at("2026-06-08T09:00"), calendar=CAL)
        return w

    def test_across_midnight_started_then_finished_ok(self):
        w = self.setup()
        assert at("2026-06-12T22:00") == next_deadline(w)
        w, mails = tick(w, now=at("2026-06-12T21:59"))
        assert [] == mails
        w, (started,) = tick(w, now=at("2026-06-12T22:00"))
        assert (MailKind.STARTED, 1) == (started.kind, started.number)
        assert w.covers("imap-eu", at("2026-06-13T00:30"))
        assert not w.covers("smtp-eu", at("2026-06-13T00:30"))
        w, (finished,) = tick(w, now=at("2026-06-13T02:00"))
        assert (MailKind.FINISHED, (), WindowState.FINISHED) == (finished.kind, w.problems,
                                                                 w.state)
        assert next_deadline(w) is None

    def test_finished_with_problems(self):
        w = self.setup()
        w, _ = tick(w, now=at("2026-06-12T22:00"))
        w, (finished,) = tick(w, now=at("2026-06-13T02:00"), bad=frozenset({"imap-eu"}))
        assert ("imap-eu",) == finished.window.problems

    def test_down_across_the_whole_window(self):
        """Both mails still go out, STARTED before FINISHED."""
        w = self.setup()
        w, mails = tick(w, now=at("2026-06-13T09:00"))
        assert [MailKind.STARTED, MailKind.FINISHED] == [m.kind for m in mails]
        assert [1, 2] == [m.number for m in mails]

    def test_dst_change_inside_the_window(self):
        """The night clocks go forward (29 March 2026) the window is an hour shorter."""
        w, _ = register(window("2026-03-29T01:00", "2026-03-29T04:00"),
                        now=at("2026-03-20T09:00"), calendar=CAL)
        assert timedelta(hours=2) == timedelta(seconds=w.end - w.start)

    def test_moved_later_then_cancelled(self):
        w = self.setup()
        w, (updated,) = move(w, start=at("2026-06-19T22:00"), end=at("2026-06-20T02:00"),
                             now=at("2026-06-11T09:00"), calendar=CAL)
        assert MailKind.UPDATED == updated.kind
        assert "moved from 2026-06-12T20:00Z" in updated.window.history[-1]
        w, (cancelled,) = cancel(w, now=at("2026-06-12T09:00"))
        assert (MailKind.CANCELLED, 2, WindowState.CANCELLED) == (cancelled.kind,
                                                                  cancelled.number, w.state)
        with pytest.raises(Refused, match="cancelled already"):
            cancel(w, now=at("2026-06-12T10:00"))

    def test_planned_moved_earlier_needs_notice(self):
        w = self.setup()
        with pytest.raises(Refused, match="announced 3 business days ahead"):
            move(w, start=at("2026-06-11T22:00"), end=at("2026-06-12T02:00"),
                 now=at("2026-06-10T09:00"), calendar=CAL)

    def test_started_window_may_only_extend(self):
        w = self.setup()
        w, _ = tick(w, now=at("2026-06-12T22:30"))
        w, (updated,) = move(w, start=w.start, end=at("2026-06-13T04:00"),
                             now=at("2026-06-12T23:00"), calendar=CAL)
        assert at("2026-06-13T04:00") == updated.window.end
        with pytest.raises(Refused, match="only its end"):
            move(w, start=at("2026-06-12T23:00"), end=w.end, now=at("2026-06-12T23:00"),
                 calendar=CAL)


class TestHold:
    """From when a BAD streak counts (DESIGN 4.7): the window's current end."""

    def running(self):
        w, _ = register(window("2026-06-12T22:00", "2026-06-13T02:00"),
                        now=at("2026-06-08T09:00"), calendar=CAL)
        w, _ = tick(w, now=at("2026-06-12T22:00"))
        return w

    def test_a_window_not_started_holds_nothing(self):
        w, _ = register(window("2026-06-12T22:00", "2026-06-13T02:00"),
                        now=at("2026-06-08T09:00"), calendar=CAL)
        assert hold_until([w], "imap-eu", at("2026-06-12T21:00")) is None

    def test_a_running_window_holds_until_its_end(self):
        w = self.running()
        assert at("2026-06-13T02:00") == hold_until([w], "imap-eu", at("2026-06-12T23:00"))
        assert hold_until([w], "smtp-eu", at("2026-06-12T23:00")) is None

    def test_moved_end_moves_the_hold(self):
        w = self.running()
        w, _ = move(w, start=w.start, end=at("2026-06-12T23:30"), now=at("2026-06-12T23:00"),
                    calendar=CAL)
        assert at("2026-06-12T23:30") == hold_until([w], "imap-eu", at("2026-06-12T23:10"))

    def test_cancelled_while_running_holds_until_the_cancellation(self):
        w = self.running()
        w, _ = cancel(w, now=at("2026-06-12T22:30"))
        assert at("2026-06-12T22:30") == hold_until([w], "imap-eu", at("2026-06-12T23:00"))

    def test_cancelled_before_its_start_never_held(self):
        w, _ = register(window("2026-06-12T22:00", "2026-06-13T02:00"),
                        now=at("2026-06-08T09:00"), calendar=CAL)
        w, _ = cancel(w, now=at("2026-06-10T09:00"))
        assert hold_until([w], "imap-eu", at("2026-06-13T00:00")) is None

    def test_finished_holds_until_its_end(self):
        w, _ = tick(self.running(), now=at("2026-06-13T02:05"))
        assert at("2026-06-13T02:00") == hold_until([w], "imap-eu", at("2026-06-13T03:00"))

