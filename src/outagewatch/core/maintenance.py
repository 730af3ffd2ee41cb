"""Maintenance windows (DESIGN 4.7), as pure functions: business days, the notice rule,
and each window's lifecycle with the mails it promises.

A platform's business days are its weekdays minus its public holidays and extra closure
days (a ``Calendar`` of plain dates; the shell fills it from the ``holidays`` package).
Planned windows must be registered at least ``notice`` business days before the day they
start, in the platform's time zone; emergency windows are accepted at any time. Every
window has its own mail thread: ANNOUNCEMENT when registered, UPDATED when moved, STARTED
at its start, FINISHED at its end (successful only if every affected service is GOOD
then), CANCELLED when withdrawn. Times are Unix seconds; ``now`` is passed in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable


class WindowKind(enum.StrEnum):
    PLANNED = "planned"
    EMERGENCY = "emergency"


class WindowState(enum.StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    FINISHED = "finished"
    CANCELLED = "cancelled"


class MailKind(enum.StrEnum):
    ANNOUNCEMENT = "announcement"
    UPDATED = "updated"
    STARTED = "started"
    FINISHED = "finished"
    CANCELLED = "cancelled"


class Refused(ValueError):
    """A request that breaks a maintenance rule; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Calendar:
    """A platform's non-working days, in its own time zone."""

    zone: tzinfo = UTC
    holidays: frozenset[date] = frozenset()
    closures: frozenset[date] = frozenset()
    weekend: frozenset[int] = frozenset({5, 6})  # Saturday, Sunday

    def is_business_day(self, day: date) -> bool:
        return (day.weekday() not in self.weekend and day not in self.holidays
                and day not in self.closures)

    def local_date(self, ts: float) -> date:
        return datetime.fromtimestamp(ts, self.zone).date()

    def announce_by(self, start_day: date, notice: int) -> date:
        """The last day on which a window starting on ``start_day`` may still be announced:
        ``notice`` business days before it."""
        day, counted = start_day, 0
        while counted < notice:
            day -= timedelta(days=1)
            if self.is_business_day(day):
                counted += 1
        return day


@dataclass(frozen=True, slots=True)
class Window:
    id: str
    platform: str
    targets: tuple[str, ...]  # the services affected
    start: float
    end: float
    kind: WindowKind
    description: str
    impact: str
    registered_at: float
    state: WindowState = WindowState.SCHEDULED
    mails: int = 0
    last_mail_at: float | None = None
    problems: tuple[str, ...] = ()  # at FINISHED: affected services not GOOD at the end
    history: tuple[str, ...] = field(default=())  # what moved, for the UPDATED mail
    closed_at: float | None = None  # when it stopped holding: its end, or its cancellation

    def active(self, now: float) -> bool:
        return self.state is WindowState.ACTIVE or (
            self.state is WindowState.SCHEDULED and self.start <= now < self.end)

    def covers(self, target: str, now: float) -> bool:
        """Does this window suppress ``target``'s BAD samples at ``now``?"""
        return target in self.targets and self.active(now)


@dataclass(frozen=True, slots=True)
class MaintenanceMail:
    kind: MailKind
    window: Window  # as it is after the change
    at: float
    number: int  # 0 for the announcement, then 1, 2, ... in the window's thread


Step = tuple[Window, list[MaintenanceMail]]


def register(window: Window, *, now: float, calendar: Calendar, notice: int = 3) -> Step:
    """Accept a new window (or raise Refused) and announce it."""
    _check_times(window.start, window.end, now)
    if window.kind is WindowKind.PLANNED:
        _check_notice(window.start, now, calendar, notice)
    accepted = replace(window, registered_at=now, state=WindowState.SCHEDULED, mails=0)
    return _mail(accepted, MailKind.ANNOUNCEMENT, now)


def move(window: Window, *, start: float, end: float, now: float, calendar: Calendar,
         notice: int = 3) -> Step:
    """Move a window that has not ended; a planned one may not move earlier than its notice
    allows."""
    if window.state in {WindowState.FINISHED, WindowState.CANCELLED}:
        raise Refused(f"maintenance {window.id} is {window.state.value}: it cannot be moved")
    if window.state is WindowState.ACTIVE and start != window.start:
        raise Refused(f"maintenance {window.id} has started: only its end can be moved")
    _check_times(start, end, now)
    if window.kind is WindowKind.PLANNED and start < window.start:
        _check_notice(start, now, calendar, notice)
    moved = replace(window, start=start, end=end,
                    history=(*window.history, (f"moved from {_iso(window.start)} - "
                             f"{_iso(window.end)}")))
    return _mail(moved, MailKind.UPDATED, now)


def cancel(window: Window, *, now: float) -> Step:
    """Withdraw a window; one that was running stops holding its services now."""
    if window.state in {WindowState.FINISHED, WindowState.CANCELLED}:
        raise Refused(f"maintenance {window.id} is {window.state.value} already")
    closed = now if window.active(now) else None
    return _mail(replace(window, state=WindowState.CANCELLED, closed_at=closed),
                 MailKind.CANCELLED, now)


def tick(window: Window, *, now: float, bad: frozenset[str] = frozenset()) -> Step:
    """Start and finish on time; ``bad`` names the services that are not GOOD right now
    (it decides the FINISHED mail's verdict). A daemon that was down across the whole
    window still sends STARTED, then FINISHED."""
    mails: list[MaintenanceMail] = []
    if window.state is WindowState.SCHEDULED and now >= window.start:
        window, sent = _mail(replace(window, state=WindowState.ACTIVE), MailKind.STARTED, now)
        mails += sent
    if window.state is WindowState.ACTIVE and now >= window.end:
        problems = tuple(sorted(t for t in window.targets if t in bad))
        window, sent = _mail(replace(window, state=WindowState.FINISHED, problems=problems,
                                     closed_at=window.end), MailKind.FINISHED, now)
        mails += sent
    return window, mails


def next_deadline(window: Window) -> float | None:
    if window.state is WindowState.SCHEDULED:
        return window.start
    if window.state is WindowState.ACTIVE:
        return window.end
    return None


def hold_until(windows: Iterable[Window], target: str, now: float) -> float | None:
    """From when a BAD streak of ``target`` may count (DESIGN 4.7): the current end of the
    windows running over it, or the moment the last one stopped holding (its end, or when it
    was cancelled). None when no window has held it."""
    ends = [w.end if w.active(now) else w.closed_at for w in windows if target in w.targets]
    held = [end for end in ends if end is not None]
    return max(held) if held else None


def _check_times(start: float, end: float, now: float) -> None:
    if end <= start:
        raise Refused("the end must be after the start")
    if end <= now:
        raise Refused("the window is over already")


def _check_notice(start: float, now: float, calendar: Calendar, notice: int) -> None:
    start_day = calendar.local_date(start)
    deadline = calendar.announce_by(start_day, notice)
    today = calendar.local_date(now)
    if today > deadline:
        raise Refused(
            f"planned maintenance must be announced {notice} business days ahead: for a "
            f"start on {start_day:%a %Y-%m-%d} announce by {deadline:%a %Y-%m-%d}, and it "
            f"is {today:%a %Y-%m-%d}; register it as an emergency if it cannot wait")


def _mail(window: Window, kind: MailKind, now: float) -> Step:
    sent = replace(window, mails=window.mails + 1, last_mail_at=now)
    return sent, [MaintenanceMail(kind, sent, now, window.mails)]


def _iso(ts: float) -> str:
    return f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%dT%H:%MZ}"
