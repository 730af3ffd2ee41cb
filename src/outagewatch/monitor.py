"""Samples to verdicts to incidents to the outbox: the shell around the pure core.

The scheduler hands every finished sample and every overdue run to ``Monitor``. It runs
the evaluator, turns declarations and recoveries into incident changes, renders their
mails and writes all of it (verdict, book, incident, outbox rows) in one transaction. It
arms a timer for each target's next deadline (so an outage is declared at streak start +
window, not at the next probe) and for each platform's next periodic update. State is
loaded from the store at start, so the update cadence and open incidents survive a restart.
"""

from __future__ import annotations

import contextlib
import email.utils
import zoneinfo
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import holidays
import structlog

from outagewatch.core import evaluator, incidents, maintenance
from outagewatch.core.evaluator import Declared, Health, Observation, OutageRule, Verdict
from outagewatch.core.incidents import Book, Platform, Service
from outagewatch.core.maintenance import Calendar, WindowKind
from outagewatch.core.maintenance import Window as MWindow
from outagewatch.core.render import DEFAULT_TEMPLATES, Observed, render, render_maintenance
from outagewatch.store import StoredSample

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from datetime import date

    from outagewatch.clock import Cancellable, Clock
    from outagewatch.config import CalendarConfig, Settings, Target
    from outagewatch.core.incidents import Notification
    from outagewatch.metrics import Metrics
    from outagewatch.model import Rule, Sample
    from outagewatch.store import Store

log = structlog.get_logger("outagewatch.monitor")

KEEP_SAMPLES = 3600.0  # seconds of samples kept beyond the window, for mails and the API
OBSERVATIONS_IN_MAIL = 3  # recent results per affected service quoted in a mail


class Monitor:
    def __init__(self, *, store: Store, clock: Clock, metrics: Metrics, settings: Settings,
                 poke: Callable[[], None] = lambda: None,
                 templates: Mapping[str, str] = DEFAULT_TEMPLATES) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._poke = poke
        self._default_templates = templates
        # runs that were in flight when the previous process stopped will never report
        self._verdicts: dict[str, Verdict] = {
            name: evaluator.resume(verdict) for name, verdict in store.verdicts().items()}
        self._books: dict[str, Book] = store.books()
        self._mwindows: dict[str, MWindow] = store.windows()
        self._timers: dict[str, Cancellable] = {}
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """Apply a (re)loaded configuration: platforms, rules, recipients."""
        self._settings = settings
        interval = (settings.notify.update_interval.total_seconds() if settings.notify
                    else 3600.0)
        self._platforms = {
            name: Platform(name, tuple(Service(t.name, t.critical, t.impact)
                                       for t in settings.targets if t.platform == name),
                           update_interval=interval)
            for name in settings.platforms
        }
        self._targets = {t.name: t for t in settings.targets}
        self._rules = {t.name: _outage_rule(settings.rule_for(t)) for t in settings.targets}
        sender = settings.notify.sender if settings.notify else "outagewatch@localhost"
        self._domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "localhost"
        custom = settings.notify.template_texts() if settings.notify else {}
        self._templates = {**self._default_templates, **custom}
        self._calendars = {name: calendar_of(platform.calendar)
                           for name, platform in settings.platforms.items()}
        self._notice = settings.maintenance.notice_days

    def register_configured_windows(self) -> None:
        """Register the config file's windows not seen before; a refused one is logged."""
        now = self._clock.now().timestamp()
        for spec in self._settings.maintenance.windows:
            known = self._mwindows.get(spec.id)
            if known is not None:
                if (known.start, known.end) != (spec.start.timestamp(), spec.end.timestamp()):
                    log.warning("maintenance_config_changed", window=spec.id,
                                note="registered windows change through the API: "
                                     "outagewatch maintenance update|cancel")
                continue
            targets = tuple(spec.targets) or tuple(
                t.name for t in self._settings.targets if t.platform == spec.platform)
            window = MWindow(id=spec.id, platform=spec.platform, targets=targets,
                             start=spec.start.timestamp(), end=spec.end.timestamp(),
                             kind=WindowKind(spec.kind), description=spec.description,
                             impact=spec.impact, registered_at=now)
            try:
                step = maintenance.register(window, now=now,
                                            calendar=self._calendars[spec.platform],
                                            notice=self._notice)
            except maintenance.Refused as exc:
                log.error("maintenance_refused", window=spec.id,  # noqa: TRY400 - no trace
                          reason=str(exc))
                continue
            with self._atomically():
                self._commit_window(step, now)

    def start(self) -> None:
        """After a (re)start: act on deadlines that passed while we were down, arm timers."""
        for name in list(self._verdicts):
            if name in self._targets:
                self._tick_target(name)
        for platform in list(self._books):
            if platform in self._platforms:
                self._tick_platform(platform)
        self.register_configured_windows()
        for window_id in list(self._mwindows):
            self._tick_window(window_id)
        self._refresh_gauges()

    def forget(self, name: str) -> None:
        """A target left the configuration: it can no longer hold an incident open."""
        timer = self._timers.pop(f"target:{name}", None)
        if timer is not None:
            timer.cancel()
        self._verdicts.pop(name, None)
        self._store.forget_target(name)
        for platform, book in self._books.items():
            if book.open is not None and name in book.open.affected:
                now = self._clock.now().timestamp()
                step = incidents.restored(book, self._platforms.get(platform, Platform(
                    platform, ())), name, now, now)
                with self._atomically():
                    self._commit_book(platform, step, now)

    # -- the scheduler's Recorder protocol -------------------------------------------------

    def started(self, target: Target, rule: Rule, started_at: datetime) -> None:
        """A run began: until its outcome is known, no deadline it could change may pass."""
        del rule
        name = target.name
        if name not in self._rules:
            return
        now = self._clock.now().timestamp()
        verdict, events = evaluator.begin(self.verdict(name), started_at.timestamp(), now=now,
                                          rule=self._rules[name])
        if events:
            with self._atomically():
                self._commit_verdict(name, verdict, events, now)
            return
        # Nothing to store: a run in flight is forgotten at a restart anyway.
        self._verdicts[name] = verdict
        self._arm_target(name, verdict, now)

    def record(self, target: Target, rule: Rule, sample: Sample) -> None:
        obs = Observation(sample.started_at.timestamp(), sample.is_bad(rule.threshold))
        stored = StoredSample(target.name, obs.start, sample.duration, sample.result.value,
                              sample.phase.value if sample.phase else None, obs.bad)
        self._observe(target.name, obs, stored)

    def overdue(self, target: Target, rule: Rule, started_at: datetime) -> None:
        del rule
        self._observe(target.name, Observation(started_at.timestamp(), bad=True, final=False))

    def abandoned(self, target: Target, rule: Rule, started_at: datetime) -> None:
        del rule
        name = target.name
        if name not in self._rules:
            return
        now = self._clock.now().timestamp()
        verdict, events = evaluator.abandon(self.verdict(name), started_at.timestamp(),
                                            now=now, rule=self._rules[name])
        with self._atomically():
            self._commit_verdict(name, verdict, events, now)

    # -- state ------------------------------------------------------------------------------

    def verdict(self, name: str) -> Verdict:
        return self._verdicts.get(name, Verdict())

    def book(self, platform: str) -> Book:
        return self._books.get(platform, Book())

    # -- operator actions (the API) ----------------------------------------------------------

    def windows(self) -> list[MWindow]:
        return sorted(self._mwindows.values(), key=lambda w: (w.start, w.id))

    def add_window(self, window: MWindow) -> MWindow:
        """Register a window from an operator; raises maintenance.Refused with the reason."""
        if window.id in self._mwindows:
            raise maintenance.Refused(f"maintenance {window.id} exists already")
        if window.platform not in self._platforms:
            raise maintenance.Refused(f"unknown platform {window.platform!r}")
        known = {s.name for s in self._platforms[window.platform].services}
        unknown = [t for t in window.targets if t not in known]
        if unknown:
            raise maintenance.Refused(f"not targets of platform {window.platform!r}: "
                                      f"{', '.join(unknown)}")
        if not window.targets:
            window = replace(window, targets=tuple(sorted(known)))
        now = self._clock.now().timestamp()
        step = maintenance.register(window, now=now, calendar=self._calendars[window.platform],
                                    notice=self._notice)
        with self._atomically():
            self._commit_window(step, now)
        return step[0]

    def move_window(self, window_id: str, start: float, end: float) -> MWindow:
        window = self._window_or_refuse(window_id)
        now = self._clock.now().timestamp()
        step = maintenance.move(window, start=start, end=end, now=now,
                                calendar=self._calendars[window.platform], notice=self._notice)
        with self._atomically():
            self._commit_window(step, now)
            self._hold(window.targets, now)
        return step[0]

    def cancel_window(self, window_id: str) -> MWindow:
        window = self._window_or_refuse(window_id)
        now = self._clock.now().timestamp()
        step = maintenance.cancel(window, now=now)
        with self._atomically():
            self._commit_window(step, now)
            self._hold(window.targets, now)
        self._refresh_gauges()
        return step[0]

    def _window_or_refuse(self, window_id: str) -> MWindow:
        window = self._mwindows.get(window_id)
        if window is None:
            raise KeyError(window_id)
        return window

    def change_incident(self, incident_id: str, *, etr: float | None = None,
                        interval: float | None = None,
                        note: str | None = None) -> incidents.Incident:
        """Set an open incident's ETR or update interval, or add a note; each change mails
        an UPDATE."""
        for platform, book in self._books.items():
            if book.open is not None and book.open.id == incident_id:
                now = self._clock.now().timestamp()
                if etr is not None:
                    with self._atomically():
                        self._commit_book(platform, incidents.set_etr(book, etr, now), now)
                if interval is not None:
                    with self._atomically():
                        self._commit_book(platform, incidents.set_update_interval(
                            self._books[platform], interval, now), now)
                if note is not None:
                    with self._atomically():
                        self._commit_book(platform, incidents.add_note(
                            self._books[platform], note, now), now)
                incident = self._books[platform].open
                assert incident is not None
                return incident
        raise KeyError(incident_id)

    def _covering_end(self, name: str, now: float) -> float | None:
        """The end of the maintenance that covers ``name`` now, if any (the latest)."""
        ends = [w.end for w in self._mwindows.values() if w.covers(name, now)]
        return max(ends) if ends else None

    def _observe(self, name: str, obs: Observation, stored: StoredSample | None = None) -> None:
        if name not in self._rules:
            return
        now = self._clock.now().timestamp()
        rule = self._rules[name]
        verdict, events = evaluator.observe(self.verdict(name), obs, arrived=now, rule=rule)
        with self._atomically():
            if stored is not None:
                self._store.add_sample(stored, keep_after=stored.start - rule.window
                                       - rule.coverage_gap - KEEP_SAMPLES)
            self._commit_verdict(name, verdict, events, now)

    def _tick_target(self, name: str) -> None:
        self._timers.pop(f"target:{name}", None)
        if name not in self._rules:
            return
        now = self._clock.now().timestamp()
        verdict, events = evaluator.tick(self.verdict(name), now, self._rules[name])
        with self._atomically():
            self._commit_verdict(name, verdict, events, now)

    def _hold(self, names: Iterable[str], now: float) -> None:
        """Inside a transaction: make each target's hold follow its windows as they are now
        (started, moved, cancelled, finished)."""
        for name in names:
            if name not in self._rules:
                continue
            floor = maintenance.hold_until(self._mwindows.values(), name, now)
            verdict = self.verdict(name)
            if verdict.floor != floor:
                held, events = evaluator.tick(evaluator.hold(verdict, floor), now,
                                              self._rules[name])
                self._commit_verdict(name, held, events, now)

    def _tick_platform(self, platform: str) -> None:
        self._timers.pop(f"platform:{platform}", None)
        now = self._clock.now().timestamp()
        step = incidents.tick(self.book(platform), now)
        with self._atomically():
            self._commit_book(platform, step, now)

    @contextlib.contextmanager
    def _atomically(self) -> Iterator[None]:
        """One transaction; if it fails, memory goes back to what the store holds."""
        try:
            with self._store.transaction():
                yield
        except BaseException:
            self._verdicts = self._store.verdicts()
            self._books = self._store.books()
            raise

    def _tick_window(self, window_id: str) -> None:
        self._timers.pop(f"window:{window_id}", None)
        window = self._mwindows.get(window_id)
        if window is None:
            return
        now = self._clock.now().timestamp()
        bad = frozenset(t for t in window.targets if self._is_bad(t))
        step = maintenance.tick(window, now=now, bad=bad)
        with self._atomically():
            self._commit_window(step, now)
            self._hold(step[0].targets, now)
        self._refresh_gauges()

    def _is_bad(self, name: str) -> bool:
        last = self._store.recent_samples(name, 1)
        return bool(last and last[-1].bad) or self.verdict(name).health is not Health.OK

    def _commit_window(self, step: maintenance.Step, now: float) -> None:
        window, mails = step
        self._store.save_window(window)
        self._mwindows[window.id] = window
        recipients = self._settings.platforms[window.platform].info_recipients \
            if window.platform in self._settings.platforms else []
        for mail in mails:
            log.info(_MAINTENANCE_EVENTS[mail.kind.value], window=window.id,
                     platform=window.platform, problems=list(window.problems))
            if self._settings.notify is None or not recipients:
                log.warning("mail_not_sent", window=window.id, kind=mail.kind.value,
                            reason="no notify relay or no info_recipients configured")
                continue
            rendered = render_maintenance(mail, recipients=recipients, domain=self._domain)
            self._store.enqueue(rendered, incident_id=window.id, number=mail.number,
                                kind=mail.kind.value, now=now)
        self._arm(f"window:{window.id}", maintenance.next_deadline(window),
                  lambda: self._tick_window(window.id), now)
        if mails:
            self._poke()

    def _commit_verdict(self, name: str, verdict: Verdict, events: list[evaluator.Event],
                        now: float) -> None:
        """Inside a transaction: save the verdict and the incident changes it causes."""
        self._store.save_verdict(name, verdict)
        platform = self._targets[name].platform
        for event in events:
            book = self.book(platform)
            if isinstance(event, Declared):
                log.warning("outage_declared", target=name, platform=platform,
                            outage_start=event.outage_start)
                step = incidents.declared(book, self._platforms[platform], name,
                                          event.outage_start, now)
            else:
                log.info("outage_ended", target=name, platform=platform,
                         restored_at=event.restored_at)
                step = incidents.restored(book, self._platforms[platform], name,
                                          event.restored_at, now)
            self._commit_book(platform, step, now)
        self._verdicts[name] = verdict
        self._metrics.target_outage.labels(name, self._targets[name].type, platform).set(
            1 if verdict.health is Health.OUTAGE else 0)
        self._arm_target(name, verdict, now)

    def _arm_target(self, name: str, verdict: Verdict, now: float) -> None:
        self._arm(f"target:{name}", evaluator.next_deadline(verdict, self._rules[name]),
                  lambda: self._tick_target(name), now)

    def _commit_book(self, platform: str, step: incidents.Step, now: float) -> None:
        book, notes = step
        self._store.save_book(platform, book)
        for note in notes:
            self._store.save_incident(note.incident)
            self._enqueue(platform, note, now)
        self._books[platform] = book
        self._arm(f"platform:{platform}", incidents.next_deadline(book),
                  lambda: self._tick_platform(platform), now)
        if notes:
            self._refresh_gauges()
            self._poke()

    def _enqueue(self, platform: str, note: Notification, now: float) -> None:
        incident = note.incident
        log.info(_EVENTS[note.kind.value], incident_id=incident.id, platform=platform,
                 severity=incident.severity, affected=sorted(incident.affected),
                 reasons=list(note.reasons))
        recipients = self._settings.platforms[platform].incident_recipients \
            if platform in self._settings.platforms else []
        if self._settings.notify is None or not recipients:
            log.warning("mail_not_sent", incident_id=incident.id, kind=note.kind.value,
                        reason="no notify relay or no incident_recipients configured")
            return
        observed = [Observed(s.target, s.start, s.duration, s.result, s.phase)
                    for name in sorted(incident.outage_starts)
                    for s in self._store.recent_samples(name, OBSERVATIONS_IN_MAIL)]
        mail = render(note, self._platforms[platform], recipients=recipients,
                      domain=self._domain, observations=observed, templates=self._templates)
        self._store.enqueue(mail, incident_id=incident.id, number=note.number,
                            kind=note.kind.value, now=now)

    def _arm(self, key: str, deadline: float | None, callback: Callable[[], None],
             now: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        if deadline is not None:
            at = self._clock.monotonic() + max(0.0, deadline - now)
            self._timers[key] = self._clock.call_at(at, callback)

    def _refresh_gauges(self) -> None:
        self._metrics.incidents_open.clear()
        for platform, book in self._books.items():
            if book.open is not None:
                self._metrics.incidents_open.labels(platform, str(book.open.severity)).set(1)
        now = self._clock.now().timestamp()
        for name, target in self._targets.items():
            covered = self._covering_end(name, now) is not None
            self._metrics.maintenance_active.labels(name, target.type, target.platform).set(
                1 if covered else 0)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


_MAINTENANCE_EVENTS = {"announcement": "maintenance_announced",
                       "updated": "maintenance_moved", "started": "maintenance_started",
                       "finished": "maintenance_finished", "cancelled": "maintenance_cancelled"}
_EVENTS = {"open": "incident_opened", "update": "incident_updated",
           "resolved": "incident_resolved"}


def calendar_of(config: CalendarConfig) -> Calendar:
    """A platform's business-day calendar: public holidays from the ``holidays`` package
    for the years around now, plus the configured closure days."""
    zone = zoneinfo.ZoneInfo(config.timezone)
    days: frozenset[date] = frozenset()
    if config.country is not None:
        year = datetime.now(zone).year
        days = frozenset(holidays.country_holidays(config.country, subdiv=config.subdivision,
                                                   years=range(year - 1, year + 3)))
    return Calendar(zone=zone, holidays=days, closures=frozenset(config.closures))


def _outage_rule(rule: Rule) -> OutageRule:
    return OutageRule.of(interval=rule.interval, timeout=rule.timeout, threshold=rule.threshold,
                     window=rule.window, recover_after=rule.recover_after)
