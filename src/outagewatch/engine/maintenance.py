"""Maintenance windows in the daemon: registered (from the configuration file or an
operator), started and finished on time, their mails sent, and the services they cover
held (the streak of a covered service counts from the window's current end: core rules in
``core.maintenance.hold_until`` and ``core.evaluator.hold``, applied by the engine).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import structlog

from outagewatch.core import maintenance as rules
from outagewatch.engine.timers import TimerKind
from outagewatch.errors import UnknownWindow
from outagewatch.store import Changes

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from outagewatch.clock import Clock
    from outagewatch.core.maintenance import Window
    from outagewatch.engine.compose import Composer
    from outagewatch.engine.engine import Engine
    from outagewatch.engine.timers import Timers
    from outagewatch.engine.writer import Writer
    from outagewatch.metrics import Metrics
    from outagewatch.topology import Topology

log = structlog.get_logger("outagewatch.maintenance")

_EVENTS = {"announcement": "maintenance_announced", "updated": "maintenance_moved",
           "started": "maintenance_started", "finished": "maintenance_finished",
           "cancelled": "maintenance_cancelled"}


class Maintenance:
    def __init__(self, *, topology: Topology, windows: Mapping[str, Window], engine: Engine,
                 writer: Writer, composer: Composer, timers: Timers, clock: Clock,
                 metrics: Metrics) -> None:
        self.topology = topology
        self._windows = dict(windows)
        self._engine = engine
        self._writer = writer
        self._composer = composer
        self._timers = timers
        self._clock = clock
        self._metrics = metrics

    def configure(self, topology: Topology) -> None:
        self.topology = topology
        self.register_configured()
        self.refresh_gauges()

    def start(self) -> None:
        """After a (re)start: register the file's new windows, catch up on starts and ends
        that passed while we were down, arm the timers, hold what is covered."""
        self.register_configured()
        for window_id in list(self._windows):
            self._tick(window_id)
        self.refresh_gauges()

    # -- reads --------------------------------------------------------------------------------

    def windows(self) -> list[Window]:
        return sorted(self._windows.values(), key=lambda w: (w.start, w.id))

    def get(self, window_id: str) -> Window:
        window = self._windows.get(window_id.lower())
        if window is None:
            raise UnknownWindow(f"no maintenance {window_id!r}")
        return window

    def covered(self, name: str, now: float) -> bool:
        return any(w.covers(name, now) for w in self._windows.values())

    # -- changes ------------------------------------------------------------------------------

    def register_configured(self) -> None:
        """Register the configuration file's windows not seen before; refusals are logged."""
        now = self._clock.now().timestamp()
        for spec in self.topology.windows:
            known = self._windows.get(spec.id)
            if known is not None:
                if (known.start, known.end) != (spec.start, spec.end):
                    log.warning("maintenance_config_changed", window=spec.id,
                                note="registered windows change through the API: "
                                     "outagewatch maintenance update|cancel")
                continue
            try:
                self.add(spec, now=now)
            except rules.Refused as exc:
                log.error("maintenance_refused", window=spec.id,  # noqa: TRY400 - no trace
                          reason=str(exc))

    def add(self, window: Window, *, now: float | None = None) -> Window:
        """Register a window (announced at once); raises core.maintenance.Refused."""
        if window.id in self._windows:
            raise rules.Refused(f"maintenance {window.id} exists already")
        known = self.topology.services_of(window.platform)
        if window.platform not in self.topology.platforms:
            raise rules.Refused(f"unknown platform {window.platform!r}")
        unknown = [t for t in window.targets if t not in known]
        if unknown:
            raise rules.Refused(f"not targets of platform {window.platform!r}: "
                                f"{', '.join(unknown)}")
        if not window.targets:
            window = replace(window, targets=tuple(sorted(known)))
        now = self._clock.now().timestamp() if now is None else now
        step = rules.register(window, now=now, calendar=self.topology.calendars[window.platform],
                              notice=self.topology.notice_days)
        self._commit(step, now)
        return step[0]

    def move(self, window_id: str, start: float, end: float) -> Window:
        window = self.get(window_id)
        calendar = self.topology.calendars.get(window.platform)
        if calendar is None:
            raise rules.Refused(f"platform {window.platform!r} is no longer configured: "
                                f"maintenance {window.id} can only be cancelled")
        now = self._clock.now().timestamp()
        step = rules.move(window, start=start, end=end, now=now, calendar=calendar,
                          notice=self.topology.notice_days)
        self._commit(step, now)
        return step[0]

    def cancel(self, window_id: str) -> Window:
        window = self.get(window_id)
        now = self._clock.now().timestamp()
        step = rules.cancel(window, now=now)
        self._commit(step, now)
        return step[0]

    def _tick(self, window_id: str) -> None:
        window = self._windows.get(window_id)
        if window is None:
            return
        now = self._clock.now().timestamp()
        bad = frozenset(t for t in window.targets if self._engine.is_bad(t))
        self._commit(rules.tick(window, now=now, bad=bad), now)

    def _commit(self, step: rules.Step, now: float) -> None:
        """The window's new state and its mails as one change; then the holds follow."""
        window, mails = step
        changes = Changes(windows={window.id: window})
        for mail in mails:
            log.info(_EVENTS[mail.kind.value], window=window.id, platform=window.platform,
                     problems=list(window.problems))
            changes.envelopes += self._composer.maintenance(mail, now)
        self._windows[window.id] = window
        self._writer.submit(changes)
        self._timers.arm(TimerKind.WINDOW, window.id, rules.next_deadline(window), now=now,
                         callback=lambda: self._tick(window.id))
        self._hold(window.targets, now)
        self.refresh_gauges()

    def _hold(self, names: Iterable[str], now: float) -> None:
        self._engine.hold({name: rules.hold_until(self._windows.values(), name, now)
                           for name in names}, now)

    def refresh_gauges(self) -> None:
        now = self._clock.now().timestamp()
        for name, target in self.topology.targets.items():
            self._metrics.maintenance_active.labels(name, target.type.value,
                                                    target.platform).set(
                1 if self.covered(name, now) else 0)
