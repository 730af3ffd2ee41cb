"""Report and page-data time from a real SQLite state at 1,000 targets.

    python -m bench.report [--targets 1000] [--rollup-days 7]

Writes one platform's month as the daemon would (per target: the time it was watched with a
restart a week, two outages a month, 5-minute rollups for the last ``--rollup-days`` days;
ten maintenance windows over a fifth of the targets each; an incident per outage), then
times, server-side and on the event loop as the daemon runs them:
- the monthly report of the platform (``History.report``, what ``outagewatch report`` and
  the availability gauge compute);
- the status page's history: 90 days of daily availability per service
  (``History.daily``) and the last 24 h of response times (``History.response_times``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

from outagewatch.config import Settings
from outagewatch.core import availability
from outagewatch.core.maintenance import Window, WindowKind, WindowState
from outagewatch.core.rollup import Rollup
from outagewatch.history import History
from outagewatch.store import Changes, OutageSpan
from outagewatch.store.sqlite import SqliteStore
from outagewatch.topology import build_topology

BUCKET = 300.0
DAY = 86400.0


def settings(path: Path, targets: int) -> Settings:
    return Settings(
        platforms={"eu": {"incident_recipients": ["oncall@example.com"],
                          "calendar": {"timezone": "Europe/Berlin"}}},
        targets=[{"name": f"t{i:04d}", "platform": "eu", "type": "http",
                  "url": f"http://t{i}/"} for i in range(targets)],
        state={"path": path})


def month_of_history(names: list[str], start: float, now: float, rollup_days: int,
                     rng: random.Random) -> list[Changes]:
    """The state the daemon would have written, in batches."""
    batches = []
    for name in names:
        changes = Changes()
        week = start
        while week < now:  # watched, with a restart (a gap of 2 minutes) every week
            changes.coverage[(name, "", week)] = min(now, week + 7 * DAY - 120)
            week += 7 * DAY
        for _ in range(2):
            begin = rng.uniform(start, now - 3600)
            changes.outages[(name, begin)] = OutageSpan(name, "eu", begin,
                                                        begin + rng.uniform(900, 7200), None)
        bucket = now - now % BUCKET - rollup_days * DAY
        while bucket < now:
            bad = rng.random() < 0.01
            changes.rollups[(name, "", bucket)] = Rollup(
                target=name, location="", bucket=bucket, runs=5, bad=1 if bad else 0,
                p50=0.08, p95=0.2, max=0.3, errors={"timeout": 1} if bad else {})
            bucket += BUCKET
        batches.append(changes)
    windows = Changes()
    for i in range(10):
        begin = rng.uniform(start, now - 4 * 3600)
        windows.windows[f"w{i}"] = Window(
            id=f"w{i}", platform="eu", targets=tuple(rng.sample(names, len(names) // 5)),
            start=begin, end=begin + 4 * 3600, kind=WindowKind.PLANNED, description="",
            impact="", registered_at=begin - 7 * DAY, state=WindowState.FINISHED,
            closed_at=begin + 4 * 3600)
    batches.append(windows)
    return batches


async def timed(what: str, runs: int, call: object) -> None:
    samples = []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        await call()  # type: ignore[operator]
        samples.append((time.perf_counter() - wall, time.process_time() - cpu))
    samples.sort()
    wall, cpu = samples[len(samples) // 2]
    print(f"{what:<58} {wall * 1000:8.1f} ms wall {cpu * 1000:8.1f} ms CPU (median of {runs})")


async def main(targets: int, rollup_days: int) -> None:
    rng = random.Random(13)
    now = datetime(2026, 11, 29, 12, tzinfo=UTC).timestamp()
    with tempfile.TemporaryDirectory() as workdir:
        config = settings(Path(workdir) / "state.db", targets)
        topology = build_topology(config, today=date(2026, 11, 29))
        names = [t.name for t in config.targets]
        store = await SqliteStore.open(config.state.path)
        try:
            start = now - 95 * DAY
            began = time.perf_counter()
            for changes in month_of_history(names, start, now, rollup_days, rng):
                await store.apply(changes)
            size = sum(p.stat().st_size for p in Path(workdir).glob("state.db*"))
            print(f"{targets} targets, 95 days watched, {rollup_days} days of rollups, "
                  f"written in {time.perf_counter() - began:.1f} s, "
                  f"state {size / 1e6:.0f} MB")
            history = History(store, lambda: topology)
            month = "2026-11"
            await timed(f"report of one platform-month ({month}, {targets} services)", 5,
                        lambda: history.report(
                            lambda zone: availability.parse_period(month, zone), ["eu"],
                            now=now))
            await timed(f"page: 90 days of daily availability, {targets} services", 3,
                        lambda: history.daily("eu", 90, now=now))
            await timed(f"page: 24 h of response times, {targets} services", 5,
                        lambda: history.response_times(names, now - DAY, now=now))
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--rollup-days", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.targets, args.rollup_days))
    sys.exit(0)
