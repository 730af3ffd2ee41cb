"""The writer: changes written behind the engine, in order, retried while the store fails,
and (with ``linger``) gathered into one transaction."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from tests.helpers.fakeclock import FakeClock
from tests.helpers.store_contract import sample

from outagewatch.core.rollup import Rollup
from outagewatch.engine.writer import Writer
from outagewatch.faults import Faults
from outagewatch.metrics import build_metrics
from outagewatch.store import KEEP_UNWRITTEN_ROLLUPS, Changes


class Recording:
    def __init__(self) -> None:
        self.units: list[Changes] = []

    async def apply(self, changes: Changes) -> None:
        self.units.append(changes)


async def test_with_linger_what_arrives_meanwhile_shares_one_transaction():
    clock = FakeClock()
    metrics = build_metrics(CollectorRegistry(), buckets=(1.0,))
    store = Recording()
    writer = Writer(store, clock=clock, faults=Faults(metrics, clock),  # type: ignore[arg-type]
                    metrics=metrics, linger=0.05)
    task = asyncio.create_task(writer.run())
    try:
        for i in range(20):
            writer.submit(Changes(samples=[sample("t", float(i))]))
            await clock.advance(0.001)
        await clock.advance(0.05)
        await writer.flush()
        assert 1 == len(store.units)
        assert 20 == len(store.units[0].samples)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_rollups_piling_up_while_the_store_cannot_write_are_bounded():
    """A long store outage costs the oldest buckets' rollups, not the daemon's memory."""
    pending = Changes()
    for bucket in range(KEEP_UNWRITTEN_ROLLUPS + 1):
        key = ("t", "", bucket * 300.0)
        pending.merge(Changes(rollups={key: Rollup("t", "", key[2], 1, 0, 1.0, 1.0, 1.0)}))
    assert KEEP_UNWRITTEN_ROLLUPS // 2 == len(pending.rollups)
    assert KEEP_UNWRITTEN_ROLLUPS * 300.0 == max(k[2] for k in pending.rollups)
    assert (KEEP_UNWRITTEN_ROLLUPS // 2 + 1) * 300.0 == min(k[2] for k in pending.rollups)
