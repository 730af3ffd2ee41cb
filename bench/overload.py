"""Overload: 10,000 targets, 5,000 of them blackholed. Is every platform's outage still
declared on time, and is what the daemon cannot do loud? (Issue 10, item 3.)

    python -m bench.overload [--interval 20] [--timeout 6] [--threshold 5] [--window 60]
                             [--capacity N] [--platforms 10] [--targets 10000]

Ten platforms of 1,000 targets. Platforms bh0..bh4 hold the 5,000 blackholed targets (HTTP,
SMTP, IMAP and POP3 in turn, all against a server that accepts and never answers, in its
own process); platforms ok0..ok4 hold healthy HTTP and SMTP targets (``bench/servers.py``,
its own process). Every platform has one control target, an HTTP endpoint that answers
until a known moment and then accepts and stalls. For each control the benchmark prints
the time from ``streak start + window`` (when the agreement says it is an outage) to the
declaration (the target: under 1 s), and for the daemon its CPU, schedule lag per kind of
platform, skipped runs by reason, discounted runs, descriptors, threads and memory.

The real daemon runs (``app.build`` and ``Daemon.serve``), with the scheduler wired as
``app.py`` is to wire it: the soft open-file limit raised, the fault registry and the
event-loop lag monitor passed in. ``--capacity`` forces ``engine.max_in_flight`` below what
the blackhole needs, to show the fair shares at work when descriptors are short.

Scaled from production so that a run takes about three minutes: interval 60 s -> 20 s,
timeout 35 s -> 6 s, threshold 30 s -> 5 s, window 15 min -> 70 s. The number of targets is
the issue's (10,000, half blackholed). The share of each interval a hung run is in flight
(timeout / interval) is 0.3 against production's 0.58, so production holds about twice as
many hung runs at once for the same blackhole (about 2,900 for 5,000 targets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from tests.helpers.ports import free_port

from outagewatch.app import Daemon, build
from outagewatch.capacity import open_files, raise_open_files
from outagewatch.clock import SystemClock
from outagewatch.config import Settings
from outagewatch.logs import configure_logging
from outagewatch.looplag import LoopLag
from outagewatch.probes import run_probe
from outagewatch.scheduler import Scheduler

if TYPE_CHECKING:
    from outagewatch.config import Target
    from outagewatch.model import Rule, Sample

PLATFORMS_BH = "bh"
PLATFORMS_OK = "ok"


# -- servers ------------------------------------------------------------------------------


async def _stall_forever() -> None:
    """A server that accepts and never answers; prints its port as JSON when ready."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0, backlog=4096)
    print(json.dumps({"stall": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.Event().wait()


def _spawn(args: list[str]) -> tuple[subprocess.Popen[str], dict[str, int]]:
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


class Control:
    """HTTP that answers at once until ``dead_at`` (wall clock), then accepts and stalls."""

    def __init__(self) -> None:
        self.dead_at = float("inf")
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            if time.time() < self.dead_at:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n"
                             b"\r\nok")
                await writer.drain()
            else:
                while await reader.read(65536):
                    pass
        writer.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


# -- the configuration ----------------------------------------------------------------------


def settings_for(args: argparse.Namespace, ports: dict[str, int], control: int,
                 state: Path) -> Settings:
    per_platform = args.targets // args.platforms
    half = args.platforms // 2
    platforms = [f"{PLATFORMS_BH}{i}" for i in range(half)] + \
        [f"{PLATFORMS_OK}{i}" for i in range(args.platforms - half)]
    targets: list[dict[str, object]] = []
    mail = {"host": "127.0.0.1", "tls": "none"}
    login = {"username": "bench", "password": "bench"}
    for platform in platforms:
        targets.append({"name": f"control-{platform}", "platform": platform, "type": "http",
                        "url": f"http://127.0.0.1:{control}/"})
        # bh: per_platform blackholed + the control; ok: per_platform - 2 healthy + the
        # control; so that the total is ``--targets`` and half of it blackholed
        for i in range(per_platform if platform.startswith(PLATFORMS_BH) else per_platform - 2):
            name = f"{platform}-{i}"
            if platform.startswith(PLATFORMS_BH):  # blackholed, every protocol in turn
                kind = ("http", "smtp", "imap", "pop3")[i % 4]
                if kind == "http":
                    targets.append({"name": name, "platform": platform, "type": "http",
                                    "url": f"http://127.0.0.1:{ports['stall']}/"})
                else:
                    targets.append({"name": name, "platform": platform, "type": kind,
                                    "port": ports["stall"], **mail,
                                    **(login if kind != "smtp" else {})})
            elif i % 2:
                targets.append({"name": name, "platform": platform, "type": "smtp",
                                "port": ports["smtp"], **mail})
            else:
                targets.append({"name": name, "platform": platform, "type": "http",
                                "url": f"http://127.0.0.1:{ports['http']}/"})
    engine = {} if args.capacity is None else {"max_in_flight": args.capacity}
    return Settings(
        server={"listen": f"127.0.0.1:{free_port()}"},
        defaults={"interval": args.interval, "timeout": args.timeout,
                  "threshold": args.threshold, "window": args.window},
        platforms={p: {"incident_recipients": ["oncall@example.com"]} for p in platforms},
        targets=targets,
        engine=engine,
        state={"path": state},
    )


# -- measuring ------------------------------------------------------------------------------


def _threads() -> int:
    return threading.active_count()


def _fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _lag(registry: CollectorRegistry, prefix: str) -> tuple[float, float, dict[float, float]]:
    """Count, mean, and the share of runs later than 0.1, 1 and 5 s, of the schedule lag of
    the platforms named ``prefix*``."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for family in registry.collect():
        if family.name != "outagewatch_schedule_lag_seconds":
            continue
        for s in family.samples:
            if not s.labels.get("platform", "").startswith(prefix):
                continue
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name.endswith("_sum"):
                total += s.value
            elif s.name.endswith("_count"):
                count += s.value
    later = {le: 1 - buckets.get(le, 0.0) / max(count, 1) for le in (0.1, 1.0, 5.0)}
    return count, total / max(count, 1), later


def _sum(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = 0.0
    for family in registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                found += s.value
    return found


@dataclasses.dataclass
class Peaks:
    fds: int = 0
    threads: int = 0
    in_flight: float = 0.0
    rss: float = 0.0

    def sample(self, scheduler: Scheduler) -> None:
        """Cheap looks only: collecting the registry of 10,000 targets blocks the loop for
        seconds (see ``scrape`` in the report)."""
        self.fds = max(self.fds, _fds())
        self.threads = max(self.threads, _threads())
        self.in_flight = max(self.in_flight, scheduler.in_flight)
        self.rss = max(self.rss, _rss_mb())


# -- the run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, ports: dict[str, int], workdir: Path) -> None:
    before, after = raise_open_files()  # app.py's first step (see the report)
    control = Control()
    await control.start()
    settings = settings_for(args, ports, control.port, workdir / "state.db")
    clock = SystemClock()
    registry = CollectorRegistry()
    daemon = Daemon(settings, clock=clock, registry=registry)
    controls = [t.name for t in settings.targets if t.name.startswith("control-")]
    declared: dict[str, tuple[float, float]] = {}  # name -> (outage start, declared at)
    peaks = Peaks()
    async with build(settings, clock=clock, registry=registry) as built:
        lag = LoopLag(clock, built.metrics)
        ctx = built.ctx

        async def probe(target: Target, rule: Rule) -> Sample:  # as build() has it
            return await run_probe(target, ctx, timeout=rule.timeout)

        scheduler = Scheduler(clock=clock, probe=probe, recorder=built.recorder,
                              metrics=built.metrics,
                              max_in_flight=settings.engine.max_in_flight,
                              faults=built.core.faults, stalls=lag)
        runtime = dataclasses.replace(built, scheduler=scheduler)
        daemon.runtime = runtime
        lag_task = asyncio.create_task(lag.run())
        serving = asyncio.create_task(daemon.serve(runtime))
        started, cpu0 = time.time(), time.process_time()
        control.dead_at = started + args.dead_after
        end = control.dead_at + args.interval + args.window + 30
        print(f"open files {before} -> {after}; probe capacity {scheduler.capacity} runs; "
              f"{len(settings.targets)} targets; controls die at +{args.dead_after:g}s",
              flush=True)
        next_peek = 0.0
        while len(declared) < len(controls) and time.time() < end:
            await asyncio.sleep(0.02)
            for name in controls:
                if name not in declared:
                    start = runtime.core.engine.verdict(name).outage_start
                    if start is not None:
                        declared[name] = (start, time.time())
            if time.monotonic() >= next_peek:
                next_peek = time.monotonic() + 1.0
                peaks.sample(scheduler)
        wall, cpu = time.time() - started, time.process_time() - cpu0
        mono0 = time.monotonic() - (time.time() - started)
        stalls = sorted(((end - begin, begin - mono0) for begin, end in lag.spans()),
                        reverse=True)[:8]
        faults = runtime.core.faults.active()
        stopping = time.perf_counter()
        daemon.stop()
        await serving
        lag_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lag_task
    stopping = time.perf_counter() - stopping
    control.close()
    scrape = time.perf_counter()
    generate_latest(registry)  # what one Prometheus scrape costs (web.py renders it in a thread)
    scrape = time.perf_counter() - scrape
    report(args, registry, controls, declared, control.dead_at, peaks, wall, cpu, faults)
    print(f"  one /metrics scrape: {scrape:.2f} s of CPU (web.py renders it in a thread, off "
          "the event loop)")
    print(f"  stopping the daemon took {stopping:.1f} s")
    print("  longest stalls of the loop: " + ", ".join(
        f"{length:.2f} s at +{at:.0f} s" for length, at in stalls))


def report(args: argparse.Namespace, registry: CollectorRegistry, controls: list[str],
           declared: dict[str, tuple[float, float]], dead_at: float, peaks: Peaks,
           wall: float, cpu: float, faults: object) -> None:
    print("\ncontrols (outage = streak start + window; latency = declared - that):")
    latencies = []
    for name in controls:
        if name not in declared:
            print(f"  {name:14} NOT DECLARED")
            continue
        start, at = declared[name]
        latency = at - (start + args.window)
        latencies.append(latency)
        print(f"  {name:14} streak start +{start - dead_at:6.2f}s after death, "
              f"declared {latency * 1000:8.1f} ms after start + window")
    if latencies:
        print(f"  worst {max(latencies) * 1000:.1f} ms; {len(latencies)}/{len(controls)} "
              f"declared; within 1 s: {sum(v <= 1.0 for v in latencies)}")
    runs = _sum(registry, "outagewatch_schedule_lag_seconds_count")
    print(f"\ndaemon over {wall:.0f} s: CPU {cpu:.1f} s = {cpu / wall:.2f} cores, "
          f"{1000 * cpu / max(runs, 1):.2f} ms per run started ({runs:.0f} runs)")
    for prefix in (PLATFORMS_BH, PLATFORMS_OK):
        count, mean, later = _lag(registry, prefix)
        print(f"  schedule lag, {prefix}* platforms: {count:.0f} runs, mean "
              f"{mean * 1000:.1f} ms; later than 0.1 / 1 / 5 s: " + " / ".join(
                  f"{100 * share:.2f}%" for share in later.values()))
    for reason in ("previous_run_in_flight", "overload"):
        for prefix in (PLATFORMS_BH, PLATFORMS_OK):
            skipped = sum(
                s.value for f in registry.collect() for s in f.samples
                if s.name == "outagewatch_probe_runs_skipped_total"
                and s.labels["reason"] == reason and s.labels["platform"].startswith(prefix))
            print(f"  skipped ({reason}), {prefix}*: {skipped:.0f}")
    print(f"  discounted runs: {_sum(registry, 'outagewatch_probe_runs_discounted_total'):.0f}")
    loop_count = _sum(registry, "outagewatch_event_loop_lag_seconds_count")
    over = loop_count - _sum(registry, "outagewatch_event_loop_lag_seconds_bucket", le="0.1")
    print(f"  event loop: {over:.0f} of {loop_count:.0f} wake-ups over 100 ms late")
    print(f"  peaks: in flight {peaks.in_flight:.0f}, descriptors {peaks.fds}, threads "
          f"{peaks.threads}, RSS {peaks.rss:.0f} MB; open-file limit {open_files()}")
    print(f"  faults active at the end: {faults}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=6.0)
    parser.add_argument("--threshold", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=70.0)
    parser.add_argument("--dead-after", type=float, default=30.0,
                        help="seconds after start at which the controls die")
    parser.add_argument("--capacity", type=int, default=None,
                        help="engine.max_in_flight (default: from the open-file limit)")
    parser.add_argument("--platforms", type=int, default=10)
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--stall-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stall_server:
        asyncio.run(_stall_forever())
        return
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    configure_logging("error", stream=sys.stderr)
    stall, stall_ports = _spawn(["-m", "bench.overload", "--stall-server"])
    servers, server_ports = _spawn(["-m", "bench.servers", "--hold", "1"])
    try:
        with tempfile.TemporaryDirectory() as workdir:
            asyncio.run(run(args, {**stall_ports, **server_ports}, Path(workdir)))
    finally:
        for proc in (stall, servers):
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
