"""Detection latency and the verdict's cost per sample.

    python -m bench.detection [--runs 10] [--platforms 20]

1. Detection latency: the real daemon (scheduler, probes, evaluator, incidents, outbox,
   mailer) watches dead services on tiny thresholds; for each outage, the time from
   ``streak_start + window`` (the moment the agreement says it is an outage) to the relay
   accepting the OPEN mail. One platform per service, so every outage opens its own
   incident. p50/p99 over all runs.
2. Cost per sample at 10,000 targets: the pure evaluator alone, and the whole engine path
   (the run's start, then its outcome: evaluator, incidents, the write to SQLite) that each
   sample takes in the daemon: with one transaction per sample (the writer flushed after
   each) and batched (the writer's group commit), with the store on its own thread (the
   daemon's way) and inline on the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiosmtpd.smtp import SMTP
from tests.helpers.engine import EngineHarness
from tests.helpers.ports import free_port

from outagewatch.app import Daemon
from outagewatch.clock import SystemClock
from outagewatch.config import Settings
from outagewatch.core import evaluator
from outagewatch.core.evaluator import Observation, OutageRule, Verdict
from outagewatch.logs import configure_logging
from outagewatch.model import Result, Sample
from outagewatch.store.sqlite import SqliteStore


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Relay:
    def __init__(self) -> None:
        self.accepted: dict[str, float] = {}  # incident id -> wall time the OPEN was accepted

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        subject = next(line for line in envelope.content.decode().splitlines()
                       if line.startswith("Subject:"))
        if "[OPEN]" in subject:
            self.accepted[subject.split()[2]] = time.time()
        return "250 OK"


async def dead_server() -> tuple[asyncio.Server, int]:
    async def silent(reader, writer):
        with contextlib.suppress(Exception):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def one_run(platforms: int, relay: Relay, relay_port: int, dead_port: int,
                  state: Path) -> list[float]:
    window = 1.0
    settings = Settings(
        server={"listen": f"127.0.0.1:{free_port()}"},
        defaults={"interval": 0.2, "timeout": 0.3, "threshold": 0.1, "window": window},
        platforms={f"p{i}": {"incident_recipients": ["oncall@example.com"]}
                   for i in range(platforms)},
        targets=[{"name": f"t{i}", "platform": f"p{i}", "type": "smtp",
                  "host": "127.0.0.1", "port": dead_port, "tls": "none"}
                 for i in range(platforms)],
        notify={"smtp": {"host": "127.0.0.1", "port": relay_port, "tls": "none"},
                "sender": "bench <b@example.com>", "update_interval": 3600,
                "retry_backoff": 0.1, "retry_max": 0.5},
        state={"path": state},
    )
    relay.accepted.clear()
    daemon = Daemon(settings)
    task = asyncio.create_task(daemon.run())
    deadline = time.monotonic() + 10
    while len(relay.accepted) < platforms and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert daemon.runtime is not None
    starts = {}
    for i in range(platforms):
        book = daemon.runtime.core.engine.book(f"p{i}")
        if book.open is not None:
            starts[book.open.id] = book.open.started_at
    daemon.stop()
    await task
    return [relay.accepted[i] - (start + window) for i, start in starts.items()
            if i in relay.accepted]


def evaluator_cost(targets: int, samples_per_target: int) -> float:
    rule = OutageRule.of(interval=60, timeout=35, threshold=30, window=900, recover_after=2)
    states = [Verdict() for _ in range(targets)]
    started = time.perf_counter()
    for k in range(samples_per_target):
        start = k * 60.0
        for i in range(targets):
            at = start + i * 0.006
            states[i], _ = evaluator.begin(states[i], at, now=at, rule=rule)
            obs = Observation(at, bad=(i + k) % 7 == 0)
            states[i], _ = evaluator.observe(states[i], obs, arrived=start + 1, rule=rule)
    return (time.perf_counter() - started) / (targets * samples_per_target) * 1e6



async def feed_samples(h: EngineHarness, settings: Settings, samples: int, *,
                       each: bool) -> None:
    """``samples`` OK runs of every target a minute apart, through the engine and the
    writer, as the scheduler reports them; ``each``: one write per sample, else batched."""
    rules = {t.name: settings.rule_for(t) for t in settings.targets}
    base = datetime.now(UTC)
    for k in range(samples):
        for i, target in enumerate(settings.targets):
            at = base + timedelta(seconds=k * 60 + i * 0.006)
            h.engine.started(target, rules[target.name], at)
            h.engine.record(target, rules[target.name], Sample(target.name, at, 0.2, Result.OK))
            if each:
                await h.writer.flush()
    await h.writer.flush()

def engine_cost(targets: int, samples_per_target: int, workdir: Path, *, threaded: bool,
                each: bool) -> tuple[float, float]:
    """Wall and CPU microseconds per sample through the engine and the writer."""
    settings = Settings(
        platforms={"eu": {"incident_recipients": ["oncall@example.com"]}},
        targets=[{"name": f"t{i}", "platform": "eu", "type": "http",
                  "url": "http://127.0.0.1/"} for i in range(targets)],
        notify={"smtp": {"host": "127.0.0.1", "port": 25, "tls": "none"},
                "sender": "bench <b@example.com>"},
        state={"path": workdir / f"state-{threaded}-{each}.db"},
    )
    async def feed() -> tuple[float, float]:
        async with EngineHarness(settings, SystemClock()) as h:
            if threaded:  # the harness's store runs inline; the daemon's on its thread
                await h.store.close()
                h.store = await SqliteStore.open(settings.state.path)
                h.writer._store = h.store  # swap the backend under test
            wall, cpu = time.perf_counter(), time.process_time()
            await feed_samples(h, settings, samples_per_target, each=each)
            count = targets * samples_per_target
            return ((time.perf_counter() - wall) / count * 1e6,
                    (time.process_time() - cpu) / count * 1e6)

    return asyncio.run(feed())


async def main(args: argparse.Namespace) -> None:
    relay = Relay()
    loop = asyncio.get_running_loop()
    relay_server = await loop.create_server(lambda: SMTP(relay, hostname="relay"),
                                            "127.0.0.1", 0)
    relay_port = relay_server.sockets[0].getsockname()[1]
    dead, dead_port = await dead_server()
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as workdir:
        for run in range(args.runs):
            latencies += await one_run(args.platforms, relay, relay_port, dead_port,
                                       Path(workdir) / f"state-{run}.db")
    relay_server.close()
    dead.close()
    ms = [v * 1000 for v in latencies]
    print(f"detection latency (streak start + window -> relay accepted OPEN), "
          f"{len(ms)} outages over {args.runs} runs:")
    print(f"  p50 {pct(ms, 0.5):.1f} ms  p99 {pct(ms, 0.99):.1f} ms  max {max(ms):.1f} ms"
          f"  min {min(ms):.1f} ms")


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--platforms", type=int, default=20)
    parser.add_argument("--targets", type=int, default=10_000)
    arguments = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    configure_logging("error", stream=sys.stderr)
    asyncio.run(main(arguments))
    print(f"\ncost per sample at {arguments.targets} targets:")
    print(f"  pure evaluator:          {evaluator_cost(arguments.targets, 5):.2f} us")
    with tempfile.TemporaryDirectory() as workdir:
        for threaded in (True, False):
            for each in (True, False):
                wall, cpu = engine_cost(arguments.targets, 2, Path(workdir),
                                        threaded=threaded, each=each)
                print(f"  engine path, store {'on its thread' if threaded else 'inline':13}"
                      f" {'one transaction per sample' if each else 'batched':27}"
                      f" wall {wall:6.1f} us  CPU {cpu:6.1f} us")
