"""A fake Clock: time moves only when a test says so (after trio's MockClock.jump)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from outagewatch.clock import Clock  # noqa: TC001 - used at run time, in the check below


@dataclass(order=True)
class _Timer:
    at: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self, start: datetime = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)) -> None:
        self._start = start
        self._now = 1000.0
        self._origin = self._now
        self._timers: list[_Timer] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._now - self._origin)

    def monotonic(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_at(deadline, wake)
        try:
            await future
        finally:
            timer.cancel()

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + seconds)

    def call_at(self, deadline: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(deadline, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    async def settle(self, rounds: int = 20) -> None:
        """Let every task that can run, run."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward, firing every timer in order and letting tasks react to each.
        Time never goes back (as trio's MockClock.jump refuses to)."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds})")
        end = self._now + seconds
        await self.settle()
        while self._timers and self._timers[0].at <= end:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, timer.at)
            timer.callback()
            await self.settle()
        self._now = end
        await self.settle()


_: type[Clock] = FakeClock  # type-checked against the real protocol
