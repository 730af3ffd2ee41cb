"""One timer per thing that has a next moment: a target's deadline, a platform's next UPDATE,
a maintenance window's start or end. Arming a timer replaces the one before it."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from outagewatch.clock import Cancellable, Clock


MAX_AHEAD = 30 * 86400.0  # a timer further ahead fires then, and is armed again for the rest


class TimerKind(enum.StrEnum):
    TARGET = "target"  # the outage deadline of a target
    PLATFORM = "platform"  # the next periodic UPDATE of a platform's incident
    WINDOW = "window"  # the next start or end of a maintenance window
    QUORUM = "quorum"  # a cluster: when a location turns blind for a target


class Timers:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._armed: dict[tuple[TimerKind, str], Cancellable] = {}

    def arm(self, kind: TimerKind, name: str, deadline: float | None, *, now: float,
            callback: Callable[[], None]) -> None:
        """Fire ``callback`` at wall-clock ``deadline`` (at once if it has passed; at most
        MAX_AHEAD from now: a callback that finds nothing due arms its timer again); None
        disarms."""
        self.cancel(kind, name)
        if deadline is None:
            return
        key = (kind, name)

        def fire() -> None:
            self._armed.pop(key, None)
            callback()

        at = self._clock.monotonic() + min(MAX_AHEAD, max(0.0, deadline - now))
        self._armed[key] = self._clock.call_at(at, fire)

    def cancel(self, kind: TimerKind, name: str) -> None:
        armed = self._armed.pop((kind, name), None)
        if armed is not None:
            armed.cancel()

    def armed(self, kind: TimerKind, name: str) -> bool:
        return (kind, name) in self._armed

    def close(self) -> None:
        for armed in self._armed.values():
            armed.cancel()
        self._armed.clear()
