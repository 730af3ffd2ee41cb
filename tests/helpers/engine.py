"""The engine and the maintenance unit on a fake clock, wired as app.build wires them, with
an inline SQLite store: samples in, outbox out, no network."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Self

from prometheus_client import CollectorRegistry

from outagewatch.app import labels_of, wire
from outagewatch.core.render import Thread, ThreadKind
from outagewatch.engine.engine import OBSERVATIONS_IN_MAIL
from outagewatch.metrics import build_metrics
from outagewatch.model import Result, Sample
from outagewatch.store.sqlite import SqliteStore


class EngineHarness:
    """``async with EngineHarness(settings, clock) as h:``; the first target is ``h.target``."""

    def __init__(self, settings: Any, clock: Any) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = CollectorRegistry()
        self.metrics = build_metrics(self.registry, buckets=(1.0,))
        self.target = settings.targets[0]
        self.rule = settings.rule_for(self.target)
        self.origin = clock.now().timestamp()

    async def __aenter__(self) -> Self:
        settings, clock = self.settings, self.clock
        for target in settings.targets:
            self.metrics.add_target(labels_of(target))
        self.store = await SqliteStore.open(settings.state.path, threaded=False)
        state = await self.store.load(recent=OBSERVATIONS_IN_MAIL)
        self.core = wire(settings, state=state, store=self.store, clock=clock,
                         metrics=self.metrics)
        self.writer, self.engine = self.core.writer, self.core.engine
        self.maintenance, self.composer = self.core.maintenance, self.core.composer
        assert self.engine.desk is not None
        self.desk = self.engine.desk
        self._writing = asyncio.create_task(self.writer.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.engine.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.writer.flush(), 1)
        self._writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writing
        await self.store.close()

    def start(self) -> None:
        """As the daemon starts them: maintenance (its holds) first, then the engine."""
        self.maintenance.start()
        self.engine.start()

    # -- reporting runs, as the scheduler does ------------------------------------------------

    def run(self, result: Result = Result.TIMEOUT, duration: float = 35.0) -> None:
        """A run that starts and ends now."""
        started_at = self.begin()
        self.finish(started_at, result, duration)

    def begin(self) -> Any:
        started_at = self.clock.now()
        self.engine.started(self.target, self.rule, started_at)
        return started_at

    def finish(self, started_at: Any, result: Result = Result.OK, duration: float = 0.2) -> None:
        self.engine.record(self.target, self.rule, Sample(self.target.name, started_at,
                                                          duration, result))

    def overdue(self, started_at: Any) -> None:
        self.engine.overdue(self.target, self.rule, started_at)

    # -- what came of it ----------------------------------------------------------------------

    async def outbox(self) -> list[tuple[str, int]]:
        """(kind, number) of every incident message, oldest incident first."""
        await self.writer.flush()
        out = []
        for incident in reversed(await self.store.incidents()):
            thread = Thread(ThreadKind.INCIDENT, incident.id).key
            out += [(m.kind, m.number) for m in await self.store.thread(thread)]
        return out

    async def messages(self, kind: ThreadKind, ident: str) -> list[Any]:
        await self.writer.flush()
        return await self.store.thread(Thread(kind, ident).key)

    async def incidents(self) -> list[Any]:
        await self.writer.flush()
        return await self.store.incidents()

    async def opened(self) -> tuple[float, float]:
        """(started_at, opened_at) of the one incident, in minutes since the clock's start."""
        (incident,) = await self.incidents()
        return ((incident.started_at - self.origin) / 60,
                (incident.opened_at - self.origin) / 60)
