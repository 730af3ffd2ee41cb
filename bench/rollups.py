"""The ledger's cost: CPU per sample of its write path, and its size per target per year.

    python -m bench.rollups [--targets 1000] [--samples 5] [--repeat 3] [--no-postgres]

1. Write cost per sample, in parts, each the least of a few alternated runs (the machine's
   other load only adds; differences of two whole runs were lost in its noise):
   - the pure part (``Accumulator.add`` and ``extend``), and the engine's ledger part
     (``Engine._ledger``: those and the keys of the change);
   - what the rollup and coverage rows add to a store's write: units of samples written
     with and without them, one sample per transaction and 100 per transaction (the
     writer's group commit); SQLite inline (its CPU is all in our thread), PostgreSQL (the
     test server of ``tests/helpers/postgres.py``, its own CPU not counted) unless
     ``--no-postgres``;
   - for scale, the whole path of a sample with the ledger (the run's start, then its
     outcome: evaluator, the writer, the store; SQLite on its thread, as in the daemon).
2. Size: a week of rollup rows of 100 targets (2,016 rows each, one change an hour)
   written to an empty store; bytes per row measured (SQLite: the file's growth; PostgreSQL:
   ``pg_total_relation_size``, table and indexes), times 105,120 buckets a year. A cluster
   keeps one row per location.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.helpers.engine import EngineHarness
from tests.helpers.postgres import Postgres

from bench.detection import feed_samples
from outagewatch.clock import SystemClock
from outagewatch.config import Settings
from outagewatch.core.rollup import BUCKET, Accumulator, Rollup, extend
from outagewatch.logs import configure_logging
from outagewatch.store import Changes, StoredSample
from outagewatch.store.postgres import PostgresStore
from outagewatch.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from outagewatch.store import StateStore

YEAR = 365 * 86_400 / BUCKET  # 105,120 buckets
WEEK = int(7 * 86_400 / BUCKET)  # 2,016


def settings(targets: int, path: Path) -> Settings:
    return Settings(
        platforms={"eu": {"incident_recipients": ["oncall@example.com"]}},
        targets=[{"name": f"target-{i:05d}", "platform": "eu", "type": "http",
                  "url": "http://127.0.0.1/"} for i in range(targets)],
        notify={"smtp": {"host": "127.0.0.1", "port": 25, "tls": "none"},
                "sender": "bench <b@example.com>"},
        state={"path": path})


async def engine_cost(cfg: Settings, samples: int, store: StateStore, *,
                      each: bool) -> float:
    """CPU microseconds per sample through the engine and the writer."""
    async with EngineHarness(cfg, SystemClock()) as h:
        h.writer._store = store  # the harness's store runs inline; the daemon's does not
        cpu = time.process_time()
        await feed_samples(h, cfg, samples, each=each)
        return (time.process_time() - cpu) / (len(cfg.targets) * samples) * 1e6


async def ledger_part_cost(cfg: Settings, count: int) -> float:
    """CPU microseconds of the engine's ledger part alone (``Engine._ledger``: the rollup,
    the coverage interval, their keys in the change), per sample."""
    async with EngineHarness(cfg, SystemClock()) as h:
        names = [t.name for t in cfg.targets]
        stored = [StoredSample(names[n % len(names)], 1_764_460_800.0 + n * 0.06, 0.2,
                               "ok", None, False) for n in range(count)]
        cpu = time.process_time()
        for sample in stored:
            h.engine._ledger(sample, 60.0, 10.0, Changes())
        return (time.process_time() - cpu) / count * 1e6


async def store_part_cost(store: StateStore, targets: int, per_unit: int,
                          units: int) -> tuple[float, float]:
    """Wall and CPU microseconds per sample that the ledger adds to a store's write: units of
    ``per_unit`` samples written with and without their rollups and coverage, alternated;
    the least of each."""
    best = {True: (math.inf, math.inf), False: (math.inf, math.inf)}
    start = 1_764_460_800.0
    for attempt in range(3):
        for ledger in (True, False):
            wall, cpu = time.perf_counter(), time.process_time()
            for u in range(units):
                changes = Changes()
                for k in range(per_unit):
                    n = (attempt * 2 + ledger) * units * per_unit + u * per_unit + k
                    name, at = f"target-{n % targets:05d}", start + n * 0.06
                    changes.samples.append(StoredSample(name, at, 0.2, "ok", None, False))
                    if ledger:
                        bucket = at - at % BUCKET
                        changes.rollups[(name, "", bucket)] = Rollup(
                            name, "", bucket, 3, 0, 0.2, 0.2, 0.2, {})
                        changes.coverage[(name, "", start)] = at + 60.0
                await store.apply(changes)
            count = units * per_unit
            took = ((time.perf_counter() - wall) / count * 1e6,
                    (time.process_time() - cpu) / count * 1e6)
            best[ledger] = (min(best[ledger][0], took[0]), min(best[ledger][1], took[1]))
    return best[True][0] - best[False][0], best[True][1] - best[False][1]


def pure_cost(count: int) -> float:
    acc = Accumulator()
    coverage: dict[str, tuple[float, float]] = {}
    cpu = time.process_time()
    for n in range(count):
        name = f"target-{n % 1000:05d}"
        start = 1_764_460_800.0 + n * 0.06
        acc.add(name, "", start=start, duration=0.2, result="ok", bad=False)
        coverage[name] = extend(coverage.get(name), start, interval=60.0, timeout=10.0)
    return (time.process_time() - cpu) / count * 1e6


def week_of_rollups(targets: int, location: str) -> list[Changes]:
    """A week of rollups of ``targets`` at a 60 s interval: 5 runs a bucket, one bucket in
    fifty with a failure. One change per hour of buckets."""
    units = []
    start = 1_764_460_800.0
    for hour in range(WEEK // 12):
        rollups = {}
        for b in range(12):
            bucket = start + (hour * 12 + b) * BUCKET
            for i in range(targets):
                failed = (i + hour * 12 + b) % 50 == 0
                rollups[(f"target-{i:05d}", location, bucket)] = Rollup(
                    f"target-{i:05d}", location, bucket, 5, int(failed), 0.1834, 0.4127,
                    0.4127 if not failed else 10.0, {"timeout": 1} if failed else {})
        units.append(Changes(rollups=rollups))
    return units


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


async def pruned_in(store: StateStore) -> float:
    """Milliseconds the housekeeping's prune of the week's first day takes."""
    wall = time.perf_counter()
    await store.apply(Changes(prune_rollups_before=1_764_460_800.0 + 86_400))
    return (time.perf_counter() - wall) * 1e3


async def sqlite_bytes_per_row(workdir: Path, targets: int) -> tuple[float, float]:
    path = workdir / "size.db"
    store = await SqliteStore.open(path, threaded=False)
    await store.apply(Changes(prune_mails_before=0.0))
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    empty = file_size(path)
    for unit in week_of_rollups(targets, ""):
        await store.apply(unit)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (rows,) = db.execute("SELECT count(*) FROM rollups").fetchone()
    per_row = (file_size(path) - empty) / rows
    prune = await pruned_in(store)
    await store.close()
    return per_row, prune


async def postgres_bytes_per_row(pg: Postgres, targets: int) -> tuple[float, float]:
    store = await PostgresStore.open(pg.url, password=pg.password)
    try:
        for unit in week_of_rollups(targets, ""):
            await store.apply(unit)
        pg.psql("VACUUM ANALYZE rollups")
        size, rows = pg.psql("SELECT pg_total_relation_size('rollups'),"
                             " (SELECT count(*) FROM rollups)").split("|")
        return int(size) / int(rows), await pruned_in(store)
    finally:
        await store.close()


async def main(args: argparse.Namespace) -> None:
    print(f"pure rollup + coverage (Accumulator.add, extend): {pure_cost(200_000):.2f} us CPU"
          " per sample")
    pg = None if args.no_postgres else Postgres.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            part = await ledger_part_cost(settings(args.targets, workdir / "part.db"), 100_000)
            print(f"the engine's ledger part (Engine._ledger): {part:.2f} us CPU per sample")
            print("what the ledger adds to the store's write, per sample (wall / our CPU):")
            for backend in ("sqlite", "postgres"):
                if backend == "postgres" and pg is None:
                    continue
                for per_unit, units in ((1, 2000), (100, 40)):
                    store: Any
                    if backend == "sqlite":  # inline: all of SQLite's CPU is in our thread
                        store = await SqliteStore.open(workdir / f"part-{per_unit}.db",
                                                       threaded=False)
                    else:
                        assert pg is not None
                        pg.reset()
                        store = await PostgresStore.open(pg.url, password=pg.password)
                    try:
                        wall, cpu = await store_part_cost(store, args.targets, per_unit, units)
                    finally:
                        await store.close()
                    mode = ("one transaction per sample" if per_unit == 1
                            else f"{per_unit} samples per transaction")
                    print(f"  {backend:8} {mode:28} +{wall:6.1f} us wall, +{cpu:6.1f} us CPU")
            print(f"the whole path of a sample with the ledger, for scale"
                  f" ({args.targets} targets x {args.samples}, our CPU):")
            for backend in ("sqlite", "postgres"):
                if backend == "postgres" and pg is None:
                    continue
                for each in (False, True):
                    cost = math.inf
                    for attempt in range(args.repeat):
                        name = f"{backend}-{each}-{attempt}"
                        cfg = settings(args.targets, workdir / f"{name}.db")
                        if backend == "sqlite":
                            store = await SqliteStore.open(workdir / f"t-{name}.db")
                        else:
                            assert pg is not None
                            pg.reset()
                            store = await PostgresStore.open(pg.url, password=pg.password)
                        try:
                            cost = min(cost, await engine_cost(cfg, args.samples, store,
                                                               each=each))
                        finally:
                            await store.close()
                    mode = "one transaction per sample" if each else "batched (group commit)"
                    print(f"  {backend:8} {mode:28} {cost:6.1f} us")
            rows = 100 * WEEK
            per_row, prune = await sqlite_bytes_per_row(workdir, 100)
            print(f"\nsize: SQLite {per_row:.1f} bytes per rollup row, "
                  f"{per_row * YEAR / 2**20:.1f} MiB per target per year; pruning a day"
                  f" of {rows:,} rows: {prune:.0f} ms")
            if pg is not None:
                pg.reset()
                per_row, prune = await postgres_bytes_per_row(pg, 100)
                print(f"size: PostgreSQL {per_row:.1f} bytes per rollup row (table and "
                      f"indexes), {per_row * YEAR / 2**20:.1f} MiB per target per year;"
                      f" pruning a day of {rows:,} rows: {prune:.0f} ms")
    finally:
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    arguments = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    configure_logging("error", stream=sys.stderr)
    asyncio.run(main(arguments))
