"""The event loop's own stalls, so that a probe is never charged with them.

Everything runs on one event loop; when something blocks it (a slow callback, a collection
pause, a store call that should not be there), every probe in flight looks slower by that
much. ``LoopLag`` sleeps in short steps and measures how late it wakes up: the lateness is a
stall, exported as ``outagewatch_event_loop_lag_seconds`` and kept for a while, so that the
scheduler can ask how long the loop stood still during a run (``stalled``). A stall still in
progress counts too: when the monitor's wake-up is overdue, the loop has been stuck since.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from outagewatch.clock import Clock
    from outagewatch.metrics import Metrics
    from outagewatch.scheduler import Stalls

log = structlog.get_logger("outagewatch.looplag")

PERIOD = 0.1  # how often the monitor wakes up; a stall is seen to within about this
NOTICEABLE = 0.02  # lateness kept as a stall (less is the loop's ordinary jitter)
LOGGED = 1.0  # a stall this long is logged
KEEP = 3600.0  # seconds of stalls kept: longer than any probe's timeout


class LoopLag:
    def __init__(self, clock: Clock, metrics: Metrics | None = None, *,
                 period: float = PERIOD, keep: float = KEEP) -> None:
        self._clock = clock
        self._metrics = metrics
        self._period = period
        self._keep = keep
        self._stalls: deque[tuple[float, float]] = deque(maxlen=100_000)
        self._due: float | None = None  # the monitor's next wake-up, while it runs

    async def run(self) -> None:
        """Measure until cancelled."""
        try:
            while True:
                due = self._clock.monotonic() + self._period
                self._due = due
                await self._clock.sleep_until(due)
                woke = self._clock.monotonic()
                self._due = None
                self.note(due, woke)
        finally:
            self._due = None

    def note(self, due: float, woke: float) -> None:
        """The loop ran a timer due at ``due`` only at ``woke``: it stood still in between."""
        lateness = max(0.0, woke - due)
        if self._metrics is not None:
            self._metrics.loop_lag.observe(lateness)
        if lateness < NOTICEABLE:
            return
        self._stalls.append((due, woke))
        while self._stalls and self._stalls[0][1] < woke - self._keep:
            self._stalls.popleft()
        if lateness >= LOGGED:
            log.warning("event_loop_stalled", lag_s=round(lateness, 3))

    def spans(self) -> list[tuple[float, float]]:
        """The stalls kept, oldest first: (since, until), monotonic."""
        return list(self._stalls)

    def stalled(self, since: float, until: float, *, longer_than: float = 0.0) -> float:
        """Seconds within ``[since, until]`` (monotonic) during which the loop stood still, in
        stalls that lasted at least ``longer_than`` seconds each."""
        total = 0.0
        for begin, end in reversed(self._stalls):
            if end <= since:
                break
            if end - begin >= longer_than:
                total += max(0.0, min(end, until) - max(begin, since))
        due = self._due
        if due is not None:
            now = self._clock.monotonic()
            if now - due >= max(NOTICEABLE, longer_than):  # overdue: stuck now, since ``due``
                total += max(0.0, min(now, until) - max(due, since))
        return total


_: type[Stalls] = LoopLag
