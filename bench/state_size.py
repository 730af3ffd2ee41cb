"""How big the state file grows: per target, and per incident's mails.

    python -m bench.state_size [--targets 1000]

Samples are kept for an hour beyond each target's window, so a target's share of the file
stops growing after a few hours: the file is measured after 3 hours of samples at a 60 s
interval (the default rule), then after an incident of a day (OPEN, 24 hourly UPDATEs,
RESOLVED) on one platform. Mails older than state.keep_mails (400 days) are pruned, so the
mails of a year's incidents are the file's upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry
from tests.helpers.fakeclock import FakeClock

from outagewatch.app import wire
from outagewatch.config import Settings
from outagewatch.logs import configure_logging
from outagewatch.metrics import build_metrics
from outagewatch.model import Result, Sample
from outagewatch.store.sqlite import SqliteStore


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


async def main(targets: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "state.db"
        settings = Settings(
            platforms={"eu": {"incident_recipients": ["oncall@example.com",
                                                      "noc@example.com"]}},
            targets=[{"name": f"target-{i:05d}", "platform": "eu", "type": "http",
                      "url": "http://x/", "impact": "Users cannot read mail."}
                     for i in range(targets)],
            notify={"smtp": {"host": "127.0.0.1"}, "sender": "NOC <noc@example.com>"},
            state={"path": path})
        clock = FakeClock()
        store = await SqliteStore.open(path, threaded=False)
        core = wire(settings, state=await store.load(recent=3), store=store, clock=clock,
                    metrics=build_metrics(CollectorRegistry(), buckets=(1.0,)))
        writing = asyncio.create_task(core.writer.run())
        empty = size(path)
        rules = {t.name: settings.rule_for(t) for t in settings.targets}

        async def minutes(count: int, result: Result) -> None:
            for _ in range(count):
                for target in settings.targets:
                    start = clock.now()
                    core.engine.started(target, rules[target.name], start)
                    core.engine.record(target, rules[target.name],
                                       Sample(target.name, start, 0.2, result))
                await core.writer.flush()
                await clock.advance(60)

        await minutes(180, Result.OK)
        steady = size(path)
        per_target = (steady - empty) / targets
        print(f"{targets} targets after 3 h of samples: {steady / 2**20:.1f} MiB, "
              f"{per_target / 1024:.1f} KiB per target (flat from here: samples older than "
              "an hour beyond the window are pruned)")
        one = settings.targets[0]
        before = size(path)
        for _ in range(16):  # down for a window: OPEN
            start = clock.now()
            core.engine.started(one, rules[one.name], start)
            core.engine.record(one, rules[one.name], Sample(one.name, start, 35.0,
                                                              Result.TIMEOUT))
            await clock.advance(60)
        await clock.advance(timedelta(hours=24).total_seconds())  # 24 hourly UPDATEs
        for _ in range(3):
            start = clock.now()
            core.engine.started(one, rules[one.name], start)
            core.engine.record(one, rules[one.name], Sample(one.name, start, 0.2, Result.OK))
            await clock.advance(60)
        await core.writer.flush()
        mails = len(await store.thread(f"incident:{(await store.incidents())[0].id}"))
        with sqlite3.connect(path) as db:
            (stored,) = db.execute("SELECT SUM(LENGTH(payload) + LENGTH(thread) + LENGTH(lane)"
                                   " + 64) FROM envelopes").fetchone()
        print(f"an incident of a day: {mails} mails (one per recipient, two recipients), "
              f"{stored / 1024:.1f} KiB of mail rows (the file grew "
              f"{(size(path) - before) / 1024:.1f} KiB: freed sample pages are reused)")
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    arguments = parser.parse_args()
    configure_logging("error", stream=sys.stderr)
    asyncio.run(main(arguments.targets))
