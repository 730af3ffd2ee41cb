"""The demo's story: all healthy, IMAP slow, POP3 dead, both healed. Printed as a timeline.

It runs the real daemon (scheduler, probes, evaluator, incidents, outbox, mailer, metrics,
/metrics endpoint) with accelerated settings against the simulated services and a local
mail sink, and checks that what it printed is what the story should produce: the outage
declared, its OPEN, UPDATE and RESOLVED mails in one thread. Exit 0 if so, 1 if not.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from outagewatch.app import Daemon
from outagewatch.config import Settings
from outagewatch.demo.services import MailSink, Service
from outagewatch.model import ProbeType, Result
from outagewatch.probes import phases_of

if TYPE_CHECKING:
    from datetime import datetime
    from email.message import Message

    from outagewatch.config import Target
    from outagewatch.model import Rule, Sample

INTERVAL, THRESHOLD, TIMEOUT, WINDOW, UPDATE = 1.0, 0.5, 1.5, 3.0, 4.0


@dataclass(frozen=True)
class Act:
    at: float
    title: str
    changes: dict[str, tuple[str, float]]  # service -> (state, delay)


STORY = (
    Act(0.0, "All four services healthy", {}),
    Act(5.0, "IMAP turns slow: its greeting takes 0.8 s, over the 0.5 s threshold",
        {"imap": ("slow", 0.8)}),
    Act(11.0, "POP3 dies: connections are accepted and never answered",
        {"pop3": ("dead", 0.0)}),
    Act(17.0, "Both healed", {"imap": ("ok", 0.0), "pop3": ("ok", 0.0)}),
)
END = 23.0


class Timeline:
    """Prints each probe result as it happens and keeps them for the final check."""

    def __init__(self, out: TextIO, started: float) -> None:
        self.out = out
        self.t0 = started
        self.samples: dict[str, list[tuple[float, Sample]]] = defaultdict(list)
        self.overdue_at: dict[str, list[float]] = defaultdict(list)
        self.mails: list[tuple[float, Message]] = []

    def mail(self, message: Message) -> None:
        at = self._now()
        self.mails.append((at, message))
        body = message.get_payload(decode=True)
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        lines = [line for line in text.splitlines() if line.strip()][:4]
        print(f"  {at:5.1f}s  MAIL to {message['To']}: {message['Subject']}", file=self.out)
        for line in lines:
            print(f"           | {line}", file=self.out)
        self.out.flush()

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    def started(self, target: Target, rule: Rule, started_at: datetime) -> None:
        del target, rule, started_at  # the timeline shows runs when they end

    def abandoned(self, target: Target, rule: Rule, started_at: datetime) -> None:
        del target, rule, started_at

    def record(self, target: Target, rule: Rule, sample: Sample) -> None:
        at = self._now()
        self.samples[target.name].append((at, sample))
        verdict = sample.result.value if not sample.ok else (
            "SLOW" if sample.is_bad(rule.threshold) else "ok")
        phases = " ".join(f"{p.value}={sample.phases[p] * 1000:.0f}ms"
                          for p in phases_of(ProbeType(target.type)) if p in sample.phases)
        where = f" in {sample.phase.value}" if sample.phase else ""
        print(f"  {at:5.1f}s  {target.name:10} {verdict:8} {sample.duration * 1000:6.0f}ms"
              f"{where}  {phases}", file=self.out, flush=True)

    def overdue(self, target: Target, rule: Rule, started_at: datetime) -> None:
        del started_at  # the timeline counts from the demo's start
        at = self._now()
        self.overdue_at[target.name].append(at)
        print(f"  {at:5.1f}s  {target.name:10} BAD now: still running after "
              f"{rule.threshold:g}s (probe_success=0 before it even ends)", file=self.out,
              flush=True)


IMPACTS = {"smtp": "Users cannot send mail.",
           "imap": "Users cannot read mail with their mail programs.",
           "pop3": "Users cannot fetch mail over POP3."}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(services: dict[str, Service], listen_port: int, state: Path,
              sink_port: int) -> Settings:
    def mail(kind: str) -> dict[str, object]:
        return {"name": f"{kind}-demo", "platform": "demo", "type": kind, "host": "127.0.0.1",
                "port": services[kind].port, "tls": "none", "username": "demo",
                "password": "demo-password", "impact": IMPACTS[kind]}

    return Settings(
        server={"listen": f"127.0.0.1:{listen_port}"},
        defaults={"interval": INTERVAL, "threshold": THRESHOLD, "timeout": TIMEOUT,
                  "window": WINDOW, "recover_after": 2},
        platforms={"demo": {"incident_recipients": ["oncall@example.com"]}},
        targets=[
            {"name": "http-demo", "platform": "demo", "type": "http",
             "url": f"http://127.0.0.1:{services['http'].port}/", "expect_body": "App Suite",
             "impact": "Users cannot reach Web-Mail."},
            mail("smtp"), mail("imap"), mail("pop3"),
        ],
        state={"path": state},
        notify={"smtp": {"host": "127.0.0.1", "port": sink_port, "tls": "none"},
                "sender": "outagewatch demo <noc@demo.invalid>", "update_interval": UPDATE,
                "coalesce": 1.0,
                "retry_backoff": 0.5, "retry_max": 2},
    )


def _verdict(timeline: Timeline) -> list[str]:
    """What the story must have produced; an empty list means it did."""
    problems = []

    def results(name: str, start: float, end: float) -> list[Sample]:
        return [s for at, s in timeline.samples[name] if start <= at < end]

    for name in ("http-demo", "smtp-demo", "imap-demo", "pop3-demo"):
        healthy = results(name, 1.0, STORY[1].at) + results(name, STORY[3].at + 2.5, END)
        if not healthy or any(s.is_bad(THRESHOLD) for s in healthy):
            problems.append(f"{name} was not healthy while it should have been")
    slow = results("imap-demo", STORY[1].at + 1.5, STORY[3].at)
    if not slow or not all(s.ok and s.is_bad(THRESHOLD) for s in slow):
        problems.append("imap-demo was not reported slow while it was")
    if not any(STORY[1].at <= at < STORY[3].at for at in timeline.overdue_at["imap-demo"]):
        problems.append("imap-demo was never marked BAD at the threshold")
    dead = results("pop3-demo", STORY[2].at + 2.0, STORY[3].at)
    if not dead or not all(s.result is Result.TIMEOUT for s in dead):
        problems.append("pop3-demo did not time out while it was dead")
    states = [m["Subject"].split("[", 1)[1].split("]", 1)[0] for _, m in timeline.mails]
    if not states or states[0] != "OPEN" or states[-1] != "RESOLVED" or "UPDATE" not in states:
        problems.append(f"the mails were not OPEN, UPDATE..., RESOLVED but {states}")
    ids = {m["Subject"].split()[1] for _, m in timeline.mails}
    if len(ids) != 1:
        problems.append(f"the mails were not one incident's thread: {sorted(ids)}")
    return problems


async def _demo(out: TextIO) -> int:
    services = {kind: Service(kind) for kind in ("http", "smtp", "imap", "pop3")}
    for service in services.values():
        await service.start()
    port = _free_port()
    loop = asyncio.get_running_loop()
    timeline = Timeline(out, loop.time())
    sink = MailSink(timeline.mail)
    await sink.start()
    workdir = tempfile.TemporaryDirectory(prefix="outagewatch-demo-")
    daemon = Daemon(_settings(services, port, Path(workdir.name) / "state.db", sink.port),
                    listeners=[timeline])
    running = asyncio.create_task(daemon.run())
    print(f"outagewatch demo: 4 simulated services, probed every {INTERVAL:g}s; a run slower "
          f"than {THRESHOLD:g}s is BAD; BAD for {WINDOW:g}s is an OUTAGE (the agreement: 30 s "
          f"and 15 min); incident updates every {UPDATE:g}s (the agreement: 1 h).\n"
          f"Status page: http://127.0.0.1:{port}/ (Atom feed: /feed.atom); live "
          f"/metrics and /api/v1/status\n", file=out, flush=True)
    try:
        for act in STORY:
            await asyncio.sleep(max(0.0, timeline.t0 + act.at - loop.time()))
            for kind, (state, delay) in act.changes.items():
                services[kind].health.state, services[kind].health.delay = state, delay
            print(f"\n== {act.at:4.1f}s  {act.title}", file=out, flush=True)
        await asyncio.sleep(max(0.0, timeline.t0 + END - loop.time()))
    finally:
        daemon.stop()
        await running
        for service in services.values():
            await service.stop()
        await sink.stop()
        workdir.cleanup()
    problems = _verdict(timeline)
    print(file=out)
    if problems:
        for problem in problems:
            print(f"demo: UNEXPECTED: {problem}", file=out)
        return 1
    print("demo: the story came out as expected: slowness and death were seen, timed and "
          "classified, declared an outage on time, mailed OPEN, UPDATE and RESOLVED in one "
          "thread, and recovery was seen too.", file=out)
    return 0


def run_demo(out: TextIO | None = None) -> int:
    return asyncio.run(_demo(out or sys.stdout))
