"""Detection latency and the verdict's cost per sample.

    python -m bench.detection [--runs 10] [--platforms 20]

1. Detection latency: the real daemon (scheduler, probes, evaluator, incidents, outbox,
   mailer) watches dead services on tiny thresholds; for each outage, the time from
   ``streak_start + window`` (the moment the agreement says it is an outage) to the relay
   accepting the OPEN mail. One platform per service, so every outage opens its own
   incident. p50/p99 over all runs.
2. Cost per sample at 10,000 targets: the pure evaluator alone, and the whole Monitor
   path (evaluator, incidents, SQLite transaction) that each sample takes in the daemon.
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
from prometheus_client import CollectorRegistry
from tests.helpers.ports import free_port

from outagewatch.app import Daemon
from outagewatch.clock import SystemClock
from outagewatch.config import Settings
from outagewatch.core import evaluator
from outagewatch.core.evaluator import Observation, Verdict, Window
from outagewatch.logs import configure_logging
from outagewatch.metrics import build_metrics
from outagewatch.model import Result, Sample
from outagewatch.monitor import Monitor
from outagewatch.store import Store


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
    assert daemon.monitor is not None
    starts = {}
    for i in range(platforms):
        book = daemon.monitor.book(f"p{i}")
        if book.open is not None:
            starts[book.open.id] = book.open.started_at
    daemon.stop()
    await task
    return [relay.accepted[i] - (start + window) for i, start in starts.items()
            if i in relay.accepted]


def evaluator_cost(targets: int, samples_per_target: int) -> float:
    rule = Window.of(interval=60, timeout=35, threshold=30, window=900, recover_after=2)
    states = [Verdict() for _ in range(targets)]
    started = time.perf_counter()
    for k in range(samples_per_target):
        start = k * 60.0
        for i in range(targets):
            obs = Observation(start + i * 0.006, bad=(i + k) % 7 == 0)
            states[i], _ = evaluator.observe(states[i], obs, arrived=start + 1, rule=rule)
    return (time.perf_counter() - started) / (targets * samples_per_target) * 1e6


def monitor_cost(targets: int, samples_per_target: int, workdir: Path) -> float:
    settings = Settings(
        platforms={"eu": {"incident_recipients": ["oncall@example.com"]}},
        targets=[{"name": f"t{i}", "platform": "eu", "type": "http",
                  "url": "http://127.0.0.1/"} for i in range(targets)],
        notify={"smtp": {"host": "127.0.0.1", "port": 25, "tls": "none"},
                "sender": "bench <b@example.com>"},
        state={"path": workdir / "state.db"},
    )
    store = Store(settings.state.path)
    metrics = build_metrics(CollectorRegistry(), buckets=(1.0,))
    monitor = Monitor(store=store, clock=SystemClock(), metrics=metrics, settings=settings)
    rules = {t.name: settings.rule_for(t) for t in settings.targets}
    base = datetime.now(UTC)

    async def feed() -> float:
        started = time.perf_counter()
        for k in range(samples_per_target):
            for i, target in enumerate(settings.targets):
                sample = Sample(target.name, base + timedelta(seconds=k * 60 + i * 0.006),
                                0.2, Result.OK)
                monitor.record(target, rules[target.name], sample)
        return (time.perf_counter() - started) / (targets * samples_per_target) * 1e6

    cost = asyncio.run(feed())
    monitor.close()
    store.close()
    return cost


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
    sys.stdout.reconfigure(line_buffering=True)
    configure_logging("error", stream=sys.stderr)
    asyncio.run(main(arguments))
    print(f"\ncost per sample at {arguments.targets} targets:")
    print(f"  pure evaluator:          {evaluator_cost(arguments.targets, 5):.2f} us")
    with tempfile.TemporaryDirectory() as workdir:
        print(f"  monitor path incl. SQLite: "
              f"{monitor_cost(arguments.targets, 2, Path(workdir)):.1f} us")
