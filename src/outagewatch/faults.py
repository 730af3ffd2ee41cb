"""The daemon's own faults, and the supervision of its long-running tasks.

A monitor that fails silently is worse than none. Every fault of the daemon's machinery (a
task that dies, a store that cannot write, a state file gone) is reported here: logged once
with its cause when it starts (``fault_raised``) and once when it clears (``fault_cleared``),
visible as ``outagewatch_fault{fault}`` (1 while active) and ``outagewatch_faults_total``,
for which ``deploy/prometheus/rules.yml`` has alerts, and listed by ``/readyz``, which says
503 while a *blocking* fault keeps the daemon from doing its job. ``supervise`` runs a task
for ever: an unexpected exception is logged with its traceback, counted, raised as a fault,
and the task restarted with backoff.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from outagewatch.clock import Cancellable, Clock
    from outagewatch.metrics import Metrics

log = structlog.get_logger("outagewatch.faults")

HEALTHY_AFTER = 30.0  # a restarted task that runs this long is well again


@dataclass(frozen=True, slots=True)
class Fault:
    cause: str
    since: float  # monotonic
    blocking: bool


class Faults:
    def __init__(self, metrics: Metrics, clock: Clock) -> None:
        self._metrics = metrics
        self._clock = clock
        self._active: dict[str, Fault] = {}

    def report(self, name: str, cause: str, *, blocking: bool = False) -> None:
        """``name`` is wrong now, because of ``cause``; logged when it starts (and when the
        cause changes), not again while it lasts."""
        known = self._active.get(name)
        if known is not None and known.cause == cause:
            return
        since = known.since if known is not None else self._clock.monotonic()
        self._active[name] = Fault(cause, since, blocking)
        if known is None:
            self._metrics.faults.labels(name).inc()
        self._metrics.fault.labels(name).set(1)
        log.error("fault_raised", fault=name, cause=cause, blocking=blocking)

    def clear(self, name: str) -> None:
        known = self._active.pop(name, None)
        if known is None:
            return
        self._metrics.fault.labels(name).set(0)
        log.info("fault_cleared", fault=name,
                 lasted_s=round(self._clock.monotonic() - known.since, 1))

    def active(self) -> Mapping[str, Fault]:
        return dict(self._active)

    def blocking(self) -> str | None:
        """Why the daemon cannot do its job now (the first blocking fault), or None."""
        for name, fault in sorted(self._active.items()):
            if fault.blocking:
                return f"{name}: {fault.cause}"
        return None


async def supervise(name: str, run: Callable[[], Awaitable[None]], *, faults: Faults,
                    metrics: Metrics, clock: Clock,
                    backoff: tuple[float, float] = (0.5, 30.0)) -> None:
    """Run ``run()`` for ever. It is never meant to return; when it raises (or returns),
    the traceback is logged, the restart counted, ``task_<name>`` raised as a blocking
    fault, and it runs again after a backoff; the fault clears once it has run well for a
    while. Only cancellation stops it."""
    failures = 0
    healthy: Cancellable | None = None
    fault = f"task_{name}"
    try:
        while True:
            started = clock.monotonic()
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error: Exception = exc
                log.exception("task_crashed", task=name, restarts=failures + 1)
            else:
                error = RuntimeError(f"the {name} task returned; it should run for ever")
                log.error("task_crashed", task=name, restarts=failures + 1, error=str(error))
            if healthy is not None:
                healthy.cancel()
            if clock.monotonic() - started > HEALTHY_AFTER:
                failures = 0
            failures += 1
            metrics.task_restarts.labels(name).inc()
            faults.report(fault, f"crashed {failures}x, last: {type(error).__name__}: "
                          f"{str(error)[:200]}", blocking=True)
            base, ceiling = backoff
            await clock.sleep_until(clock.monotonic() + min(ceiling, base * 2 ** (failures - 1)))
            healthy = clock.call_at(clock.monotonic() + HEALTHY_AFTER,
                                    lambda: faults.clear(fault))
    finally:
        if healthy is not None:
            healthy.cancel()
