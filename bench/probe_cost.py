"""Probe engine benchmark: cost per probe, schedule lag, memory and timing accuracy.

    python -m bench.probe_cost [--vs-blackbox] [--quick]

1. Per protocol: N targets against local servers (HTTP and SMTP in a separate process,
   Dovecot for IMAP and POP3), scheduled at a fixed rate by the real scheduler; prints
   probes/s, CPU ms per probe, RSS and schedule lag p50/p99. With --vs-blackbox the same
   dialogues run through Debian's prometheus-blackbox-exporter at the same rate, and the
   CPU-per-probe ratio is printed side by side.
2. 10,000 HTTP targets at a 60 s interval: schedule lag p50/p99 and RSS.
3. Timing accuracy: 1,000 concurrent probes of an endpoint that answers after exactly 2 s.

Figures, not pass/fail. Servers' CPU is never counted as ours: they run in other processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import trustme
from prometheus_client import CollectorRegistry
from pydantic import TypeAdapter
from tests.helpers.dovecot import Dovecot
from tests.helpers.ports import free_port

from outagewatch.app import labels_of
from outagewatch.clock import SystemClock
from outagewatch.config import Target
from outagewatch.metrics import build_metrics, duration_buckets
from outagewatch.model import Rule, Sample
from outagewatch.probes import ProbeContext, new_http_session, run_probe
from outagewatch.scheduler import Scheduler, stable_offset

TARGET = TypeAdapter(Target)
TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Recorder:
    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def started(self, target, rule, started_at) -> None:
        pass

    def abandoned(self, target, rule, started_at) -> None:
        pass

    def record(self, target, rule, sample) -> None:
        self.samples.append(sample)

    def overdue(self, target, rule, started_at) -> None:
        pass


async def run_engine(targets: list, interval: float, seconds: float, *, warmup: float) -> dict:
    """Run the real scheduler and probes; measure CPU, probes and lag after the warm-up."""
    clock = SystemClock()
    rule = Rule(interval=interval, timeout=10.0, threshold=5.0, window=900.0, recover_after=2)
    registry = CollectorRegistry()
    metrics = build_metrics(registry, buckets=duration_buckets([5.0], 10.0))
    recorder = Recorder()
    lags: list[float] = []
    measuring = False
    async with new_http_session() as session:
        ctx = ProbeContext(clock=clock, session=session)
        async def probe(target, rule):
            now = clock.monotonic()
            first = scheduler.epoch + stable_offset(target.name, interval)
            planned = first + round((now - first) / interval) * interval
            if measuring:
                lags.append(now - planned)
            return await run_probe(target, ctx, timeout=rule.timeout)

        scheduler = Scheduler(clock=clock, probe=probe, recorder=recorder, metrics=metrics,
                              max_in_flight=2048)
        for t in targets:
            metrics.add_target(labels_of(t))
        scheduler.apply([(t, rule) for t in targets])
        task = asyncio.create_task(scheduler.run())
        await asyncio.sleep(warmup)
        measuring = True
        done_before = len(recorder.samples)
        cpu_before = time.process_time()
        wall_before = time.monotonic()
        await asyncio.sleep(seconds)
        cpu = time.process_time() - cpu_before
        wall = time.monotonic() - wall_before
        window = recorder.samples[done_before:]
        measuring = False
        rss = rss_mb()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    ok = sum(1 for s in window if s.ok)
    return {"probes": len(window), "ok": ok, "rate": len(window) / wall,
            "cpu_ms": 1000 * cpu / max(1, len(window)), "rss": rss,
            "lag50": pct(lags, 0.5) * 1000, "lag99": pct(lags, 0.99) * 1000,
            "errors": sorted({s.detail for s in window if not s.ok})[:3]}


BLACKBOX_MODULES = """
modules:
  http_2xx:
    prober: http
    timeout: 10s
  smtp:
    prober: tcp
    timeout: 10s
    tcp:
      query_response:
        - expect: "^220 "
        - send: "EHLO bench\\r"
        - expect: "^250 "
        - send: "QUIT\\r"
        - expect: "^221"
  imap:
    prober: tcp
    timeout: 10s
    tcp:
      query_response:
        - expect: "^\\\\* OK"
        - send: "a1 LOGIN {user} {password}\\r"
        - expect: "^a1 OK"
        - send: "a2 SELECT INBOX\\r"
        - expect: "^a2 OK"
        - send: "a3 LOGOUT\\r"
        - expect: "^a3 OK"
  pop3:
    prober: tcp
    timeout: 10s
    tcp:
      query_response:
        - expect: "^\\\\+OK"
        - send: "USER {user}\\r"
        - expect: "^\\\\+OK"
        - send: "PASS {password}\\r"
        - expect: "^\\\\+OK"
        - send: "STAT\\r"
        - expect: "^\\\\+OK"
        - send: "QUIT\\r"
        - expect: "^\\\\+OK"
"""


async def run_blackbox(port: int, pid: int, module: str, targets: list[str], rate: float,
                       seconds: float) -> dict:
    """Drive /probe at ``rate`` for ``seconds``; count the exporter's CPU only."""
    sem = asyncio.Semaphore(256)
    results: list[bool] = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(target: str) -> None:
            async with sem, session.get(f"http://127.0.0.1:{port}/probe",
                                        params={"module": module, "target": target}) as r:
                results.append("probe_success 1" in await r.text())

        cpu_before = cpu_seconds(pid)
        start = time.monotonic()
        tasks = []
        count = int(rate * seconds)
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(targets[i % len(targets)])))
        await asyncio.gather(*tasks)
        wall = time.monotonic() - start
        cpu = cpu_seconds(pid) - cpu_before
    return {"probes": len(results), "ok": sum(results), "rate": len(results) / wall,
            "cpu_ms": 1000 * cpu / max(1, len(results)), "rss": rss_mb(pid)}


def targets_for(kind: str, n: int, ports: dict, dovecot: Dovecot) -> list:
    out = []
    for i in range(n):
        name = f"{kind}-{i}"
        spec: dict[str, object]
        if kind == "http":
            spec = {"type": "http", "url": f"http://127.0.0.1:{ports['http']}/"}
        elif kind == "smtp":
            spec = {"type": "smtp", "host": "127.0.0.1", "port": ports["smtp"], "tls": "none",
                    "ehlo_hostname": "bench"}
        else:
            spec = {"type": kind, "host": "127.0.0.1", "tls": "none", "username": dovecot.user,
                    "password": dovecot.password,
                    "port": dovecot.imap if kind == "imap" else dovecot.pop3}
        out.append(TARGET.validate_python({"name": name, "platform": "bench", **spec}))
    return out


async def accuracy(ports: dict, count: int, hold: float, *, spread: float) -> dict:
    """``count`` probes at once of an endpoint that answers after exactly ``hold`` s.

    Two errors: measured minus ``hold`` (everything: both event loops' queueing included),
    and measured minus what the server really took for that request (its own stamps), which
    is the error of our measurement: connect, request, response and our loop's delays.
    """
    base = f"http://127.0.0.1:{ports['http']}"
    async with new_http_session() as session:
        ctx = ProbeContext(clock=SystemClock(), session=session)
        targets = [TARGET.validate_python({"name": f"hold-{i}", "platform": "bench",
                                           "type": "http", "url": f"{base}/hold?id={i}"})
                   for i in range(count)]
        start = time.monotonic()

        async def one(i: int, target):
            await asyncio.sleep(max(0.0, start + spread * i / count - time.monotonic()))
            return await run_probe(target, ctx, timeout=hold + 10)

        samples = await asyncio.gather(*(one(i, t) for i, t in enumerate(targets)))
        async with session.get(f"{base}/held") as response:
            held = await response.json()
    total = [(s.duration - hold) * 1000 for s in samples if s.ok]
    ours = [(s.duration - (held[s.target.split("-")[1]][1] - held[s.target.split("-")[1]][0]))
            * 1000 for s in samples if s.ok and s.target.split("-")[1] in held]
    return {"ok": len(total), "count": count, "err50": pct(total, 0.5),
            "err99": pct(total, 0.99), "own50": pct(ours, 0.5), "own99": pct(ours, 0.99),
            "ownmax": max(ours) if ours else float("nan")}


def start_blackbox(dovecot: Dovecot, workdir: Path) -> tuple[subprocess.Popen, int] | None:
    binary = shutil.which("prometheus-blackbox-exporter")
    if binary is None:
        print("prometheus-blackbox-exporter not installed (apt-get install "
              "prometheus-blackbox-exporter); skipping the comparison")
        return None
    config = workdir / "blackbox.yml"
    config.write_text(BLACKBOX_MODULES.replace("{user}", dovecot.user)
                      .replace("{password}", dovecot.password))
    port = free_port()
    process = subprocess.Popen([binary, f"--config.file={config}",
                                f"--web.listen-address=127.0.0.1:{port}", "--log.level=error"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            import urllib.request
            urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=1)
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("blackbox_exporter did not start")


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="owbench-"))
    workdir.chmod(0o755)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
    (workdir / "key.pem").chmod(0o644)
    dovecot = Dovecot.start(workdir / "cert.pem", workdir / "key.pem")
    servers = subprocess.Popen([sys.executable, "-m", "bench.servers", "--hold", "2.0"],
                               stdout=subprocess.PIPE, text=True)
    assert servers.stdout is not None
    ports = json.loads(servers.stdout.readline())
    blackbox = start_blackbox(dovecot, workdir) if args.vs_blackbox else None
    n, rate, seconds = (50, 25.0, 8.0) if args.quick else (args.targets, args.rate,
                                                           args.seconds)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
          f"{n} targets per protocol at {rate:g} probes/s, measured for {seconds:g} s\n")
    header = (f"{'protocol':8} {'who':10} {'probes/s':>9} {'ok':>6} {'CPU ms/probe':>13} "
              f"{'RSS MB':>7} {'lag p50':>8} {'lag p99':>8}")
    print(header)
    print("-" * len(header))
    try:
        for kind, module in (("http", "http_2xx"), ("smtp", "smtp"), ("imap", "imap"),
                             ("pop3", "pop3")):
            if args.only not in {None, "cost"}:
                break
            targets = targets_for(kind, n, ports, dovecot)
            ours = await run_engine(targets, interval=n / rate, seconds=seconds,
                                    warmup=n / rate + 1)
            print(f"{kind:8} {'outagewatch':10} {ours['rate']:9.1f} {ours['ok']:6d} "
                  f"{ours['cpu_ms']:13.3f} {ours['rss']:7.0f} {ours['lag50']:7.1f}ms "
                  f"{ours['lag99']:7.1f}ms")
            if ours["errors"]:
                print(f"         errors: {ours['errors']}")
            if blackbox is not None:
                endpoint = (f"http://127.0.0.1:{ports['http']}/" if kind == "http" else
                            f"127.0.0.1:{targets[0].effective_port}")
                theirs = await run_blackbox(blackbox[1], blackbox[0].pid, module, [endpoint],
                                            rate, seconds)
                print(f"{kind:8} {'blackbox':10} {theirs['rate']:9.1f} {theirs['ok']:6d} "
                      f"{theirs['cpu_ms']:13.3f} {theirs['rss']:7.0f}")
                print(f"{'':8} {'ratio':10} {'':9} {'':6} "
                      f"{ours['cpu_ms'] / theirs['cpu_ms']:12.2f}x  (ours / blackbox)")
        if (not args.quick or args.big) and args.only in {None, "scale"}:
            big_n = args.big_targets
            print(f"\n{big_n} HTTP targets at a 60 s interval "
                  f"({big_n / 60:.0f} probes/s), measured for {args.big_seconds:g} s")
            big = await run_engine(targets_for("http", big_n, ports, dovecot), interval=60.0,
                                   seconds=args.big_seconds, warmup=5.0)
            print(f"  probes {big['probes']} ok {big['ok']}  CPU {big['cpu_ms']:.3f} ms/probe"
                  f"  lag p50 {big['lag50']:.1f} ms  p99 {big['lag99']:.1f} ms"
                  f"  RSS {big['rss']:.0f} MB")
        count = 100 if args.quick else 1000
        spreads = () if args.only not in {None, "accuracy"} else (4.0, 2.0, 1.0, 0.0)
        for spread in spreads:
            how = (f"starts spread over {spread:g} s, {count / spread:.0f} starts/s"
                   if spread else "all started at the same instant")
            acc = await accuracy(ports, count, 2.0, spread=spread)
            print(f"\ntiming accuracy: {acc['count']} concurrent probes of a 2.000 s "
                  f"endpoint ({how}), {acc['ok']} ok\n"
                  f"  measured - 2 s:                 p50 {acc['err50']:7.2f} ms  "
                  f"p99 {acc['err99']:7.2f} ms\n"
                  f"  measured - server's true hold:  p50 {acc['own50']:7.2f} ms  "
                  f"p99 {acc['own99']:7.2f} ms  max {acc['ownmax']:.2f} ms")
    finally:
        servers.terminate()
        servers.wait()
        if blackbox is not None:
            blackbox[0].terminate()
            blackbox[0].wait()
        dovecot.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vs-blackbox", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke run")
    parser.add_argument("--big", action="store_true", help="with --quick: run the 10k part")
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--big-targets", type=int, default=10_000)
    parser.add_argument("--big-seconds", type=float, default=70.0)
    parser.add_argument("--uvloop", action="store_true", help="run our side on uvloop")
    parser.add_argument("--only", choices=["cost", "scale", "accuracy"])
    arguments = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # figures appear as they are measured
    if arguments.uvloop:
        import uvloop
        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
