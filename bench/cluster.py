"""Cluster mode: failover under kill -9, duplicates and losses, and the cost at scale.

    python -m bench.cluster [--kills 20] [--aimed 6] [--lease 3s] [--scale-targets 2000]
                            [--scale-interval 10s] [--scale-seconds 60]
                            [--only failover|scale] [--seed 7]

Everything runs on a private PostgreSQL (tests/helpers/postgres.py: fsync off) with real
``outagewatch run`` processes (tests/helpers/daemon.py), three nodes at locations a, b, c.

1. Failover: the nodes probe one HTTP target (aiohttp, in this process), each through its
   own location's FaultProxy, on tiny rules, quorum 2. All three proxies stall, an incident
   opens. Then --kills times: the leader (the node whose latest term event is ``term_begun``)
   is killed with SIGKILL 0-2 s into the round, and the time is measured from the kill to
   ``term_begun`` on another node and to the next mail the relay accepts in an SMTP session
   that began after the kill (a mail the dying leader had already handed over is not the
   new leader's). The killed node is restarted (same config) once that is seen.
2. Duplicates and losses, over the same kills: every fourth round heals the service 0-3 s
   before the kill and the next breaks it again 0-3 s before the kill, so kills also land
   around RESOLVED and OPEN. At the relay: OPEN and RESOLVED mails per incident, any mail
   received twice (same Message-ID, same recipient), and gaps in a thread's numbering. At
   the end the service heals and every incident must get its RESOLVED. Then --aimed more
   kills, each 0-10 ms after the relay accepted a mail of the leader: aimed at the window
   between the relay's 250 and the commit of the delivery record, the only place a kill can
   send a mail twice (random kills almost never land there).
3. Scale: three nodes with --scale-targets HTTP targets each at --scale-interval against a
   healthy local server (bench/servers.py, its own process); samples written per second,
   CPU per second of the leader, the followers and PostgreSQL, database growth; then the
   cost of one sample write, ``PostgresStore.apply`` against ``SqliteStore.apply``, in
   batches of 100 samples with their verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiosmtpd.smtp import SMTP
from tests.helpers.daemon import DaemonProcess
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.ports import free_port
from tests.helpers.postgres import Postgres, postgres_binaries

from outagewatch.core.evaluator import Run, Status, Verdict
from outagewatch.durations import parse_duration
from outagewatch.logs import configure_logging
from outagewatch.store import Changes, StoredSample
from outagewatch.store.postgres import PostgresStore
from outagewatch.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from collections.abc import Callable

LOCATIONS = ("a", "b", "c")
RULES = {"interval": "0.5s", "timeout": "0.45s", "threshold": "0.3s", "window": "1.5s",
         "recover_after": "2"}
NOTIFY = "update_interval: 2s, coalesce: 0.3s, retry_backoff: 0.2s, retry_max: 1s"
CYCLE = ("steady", "steady", "heal", "break")  # what each round does before its kill
AIM = 0.01  # an aimed kill: up to this many seconds after the relay accepted a mail
CLK_TCK = os.sysconf("SC_CLK_TCK")
_MESSAGE_ID = re.compile(r"^<(?P<kind>[a-z]+)\.(?P<thread>.+)\.(?P<number>\d+)\.[^.@]+@")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def spread(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (f"p50 {pct(values, 0.5):.2f} s  p95 {pct(values, 0.95):.2f} s  "
            f"p99 {pct(values, 0.99):.2f} s  max {max(values):.2f} s  (n={len(values)})")


# -- the relay ------------------------------------------------------------------------------


@dataclass
class Mail:
    at: float  # monotonic, when the relay accepted DATA
    began: float  # monotonic, when its SMTP session said EHLO/HELO
    rcpt: tuple[str, ...]
    message_id: str
    subject: str

    @property
    def kind(self) -> str:
        return self.subject.split("[", 1)[1].split("]", 1)[0] if "[" in self.subject else "?"

    @property
    def incident(self) -> str:
        return self.subject.split()[1] if self.subject.startswith("Incident ") else "?"

    @property
    def number(self) -> int:
        found = _MESSAGE_ID.match(self.message_id)
        return int(found["number"]) if found else -1


class Relay:
    """aiosmtpd handler: every accepted mail, and when its session began."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.port = 0
        self.on_accept: Callable[[Mail], None] | None = None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        session.began = time.monotonic()
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        message = message_from_bytes(envelope.content)
        mail = Mail(time.monotonic(), getattr(session, "began", 0.0), tuple(envelope.rcpt_tos),
                    str(message["Message-ID"]), " ".join(str(message["Subject"]).split()))
        self.mails.append(mail)
        if self.on_accept is not None:
            self.on_accept(mail)
        return "250 OK"

    def first_after(self, moment: float) -> Mail | None:
        """The first mail of a session that began after ``moment``."""
        return next((m for m in self.mails if m.began > moment), None)

    def has(self, kind: str, incident: str | None = None, *, after: float = 0.0) -> bool:
        return any(m.kind == kind and (incident is None or m.incident == incident)
                   and m.at > after for m in self.mails)

    def last_opened(self) -> str | None:
        opens = [m for m in self.mails if m.kind == "OPEN"]
        return opens[-1].incident if opens else None


async def start_relay(relay: Relay) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(relay, hostname="relay.bench"),
                                      "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    return server


# -- the nodes ------------------------------------------------------------------------------


class Daemon(DaemonProcess):
    """DaemonProcess at a chosen log level (its own is debug: a line per probe, too much
    for thousands of targets)."""

    def __init__(self, config: Path, *, level: str = "info") -> None:
        super().__init__(config)
        self.level = level

    async def start(self, port: int, *, ready_within: float = 30) -> Daemon:
        self.port = port
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "outagewatch", "--log-level", self.level, "run",
            "-c", str(self.config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env)
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(self.ready, timeout=ready_within, what="readyz")
        return self

    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def leads(self) -> bool:
        terms = [e["event"] for e in self.events() if e.get("event") in {"term_begun",
                                                                         "term_ended"}]
        return self.alive() and bool(terms) and terms[-1] == "term_begun"

    def term_begun_at(self, after: float) -> float | None:
        """Wall time of this process's first ``term_begun`` logged after ``after``."""
        for event in self.events():
            if event.get("event") == "term_begun":
                at = wall(event)
                if at > after:
                    return at
        return None

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)


def wall(event: dict[str, Any]) -> float:
    stamp = event.get("timestamp")
    return datetime.fromisoformat(stamp).timestamp() if isinstance(stamp, str) else 0.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and its children (the postmaster and its backends); a
    backend that ended in between takes its seconds with it, so this is a lower bound."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == root or int(fields[1]) == root:
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


@dataclass
class Node:
    name: str
    location: str
    port: int
    config: Path
    level: str = "info"
    daemon: Daemon | None = None
    history: list[Daemon] = field(default_factory=list)  # every process it ran, killed too

    async def start(self) -> Daemon:
        daemon = Daemon(self.config, level=self.level)
        self.history.append(daemon)
        self.daemon = daemon
        await daemon.start(self.port)
        return daemon

    @property
    def process(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    async def stop(self) -> None:
        if self.daemon is not None and self.daemon._process is not None:
            with contextlib.suppress(Exception):
                await self.daemon.stop()


def write_config(directory: Path, pg: Postgres, dbname: str, *, node: str, location: str,
                 port: int, relay_port: int, lease: str, targets: list[str],
                 defaults: dict[str, str]) -> Path:
    (directory / "db-password").write_text(pg.password + "\n")
    rules = ", ".join(f"{k}: {v}" for k, v in defaults.items())
    body = "\n".join(f"  - {t}" for t in targets)
    text = f"""
server: {{listen: "127.0.0.1:{port}"}}
defaults: {{{rules}}}
platforms: {{eu: {{incident_recipients: [oncall@example.com]}}}}
targets:
{body}
notify:
  smtp: {{host: 127.0.0.1, port: {relay_port}, tls: none}}
  sender: "NOC <noc@example.com>"
  {NOTIFY.replace(", ", chr(10) + "  ")}
state:
  url: "postgresql://{pg.user}@127.0.0.1:{pg.port}/{dbname}"
  password_file: "{directory}/db-password"
cluster: {{node: {node}, location: {location}, locations: [a, b, c], quorum: 2,
           lease: {lease}}}
"""
    path = directory / f"{node}.yaml"
    path.write_text(text)
    return path


async def until(predicate: Any, timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(poll)
    return bool(predicate())


async def start_all(nodes: list[Node]) -> None:
    """Start the nodes together; the first failure raised once every start has ended."""
    outcomes = await asyncio.gather(*(n.start() for n in nodes), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def leaders(nodes: list[Node]) -> list[Node]:
    return [n for n in nodes if n.daemon is not None and n.daemon.leads()]


def new_database(pg: Postgres, name: str) -> None:
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", dbname="postgres")
    pg.psql(f"CREATE DATABASE {name} OWNER {pg.user}", dbname="postgres")


# -- 1 and 2: failover, duplicates and losses --------------------------------------------------


@dataclass
class Kill:
    round: int
    plan: str  # steady, heal, break, aimed
    victim: str
    at: float  # monotonic
    to_term: float | None = None
    to_mail: float | None = None
    mail: str = ""  # kind of the next mail
    expected_mail: bool = False
    stragglers: int = 0  # mails of sessions begun before the kill, accepted after it
    aim: float | None = None  # aimed: seconds from the relay's acceptance to the kill
    process: Daemon | None = field(default=None, repr=False)  # the killed one

    def logged_sent(self, mail: Mail) -> bool:
        """Did the killed leader log ``mail_sent`` for this mail (it had the 250)?"""
        return self.process is not None and any(
            e.get("event") == "mail_sent" and e.get("number") == mail.number
            and str(e.get("thread", "")).rpartition(":")[2] == mail.incident
            for e in self.process.events())


async def failover(args: argparse.Namespace, pg: Postgres) -> dict[str, Any]:
    lease_seconds = parse_duration(args.lease).total_seconds()
    rng = random.Random(args.seed)
    new_database(pg, "failover")

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    web_port = server.sockets[0].getsockname()[1]
    relay = Relay()
    relay_server = await start_relay(relay)
    nodes: list[Node] = []
    kills: list[Kill] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ow-bench-cluster-") as work:
            async with contextlib.AsyncExitStack() as stack:
                proxies = {loc: await stack.enter_async_context(FaultProxy(web_port))
                           for loc in LOCATIONS}
                for loc in LOCATIONS:
                    directory = Path(work) / loc
                    directory.mkdir()
                    port = free_port()
                    target = (f"{{name: webmail-eu, platform: eu, type: http,"
                              f" url: 'http://127.0.0.1:{proxies[loc].port}/'}}")
                    config = write_config(directory, pg, "failover", node=f"node-{loc}",
                                          location=loc, port=port, relay_port=relay.port,
                                          lease=args.lease, targets=[target], defaults=RULES)
                    nodes.append(Node(f"node-{loc}", loc, port, config))
                try:
                    await start_all(nodes)
                    if not await until(lambda: len(leaders(nodes)) == 1, 30):
                        raise RuntimeError("no single leader within 30 s")
                    await asyncio.sleep(1.0)

                    def set_broken(broken: bool) -> None:
                        for proxy in proxies.values():
                            proxy.mode = Fault("stall") if broken else Fault()

                    set_broken(True)
                    broken = True
                    if not await until(lambda: relay.has("OPEN"), 30):
                        raise RuntimeError("no OPEN within 30 s of the outage")
                    print(f"  incident {relay.last_opened()} open; killing the leader "
                          f"{args.kills} times (lease {args.lease})", flush=True)
                    total = args.kills + args.aimed
                    for number in range(total):
                        plan = CYCLE[number % len(CYCLE)] if number < args.kills else "aimed"
                        if plan == "aimed" and not broken:
                            set_broken(True)
                            broken = True
                            since = time.monotonic()
                            await until(lambda since=since: relay.has("OPEN", after=since), 30)
                        kill = await one_kill(number, plan, nodes, relay, rng, lease_seconds,
                                              broken, set_broken)
                        if plan in {"heal", "break"}:
                            broken = plan == "break"
                        kills.append(kill)
                        term = "-" if kill.to_term is None else f"{kill.to_term:.2f} s"
                        mail = ("-" if kill.to_mail is None
                                else f"{kill.to_mail:.2f} s ({kill.mail})")
                        print(f"  kill {number + 1}/{total} [{plan}] {kill.victim}: "
                              f"term_begun after {term}, next mail after {mail}", flush=True)
                    set_broken(False)
                    opened = {m.incident for m in relay.mails if m.kind == "OPEN"}
                    await until(lambda: all(relay.has("RESOLVED", i) for i in opened), 60, 0.1)
                    await asyncio.sleep(3.0)  # late duplicates, a stray UPDATE
                finally:
                    await asyncio.gather(*(n.stop() for n in nodes))
    finally:
        relay_server.close()
        await runner.cleanup()
    return {"kills": kills, "relay": relay, "nodes": nodes, "lease": lease_seconds}


async def one_kill(number: int, plan: str, nodes: list[Node], relay: Relay,
                   rng: random.Random, lease: float, broken: bool,
                   set_broken: Callable[[bool], None]) -> Kill:
    if plan == "break":
        current = relay.last_opened()
        if current is not None:  # a new break is a new incident: the last one closed first
            await until(lambda: relay.has("RESOLVED", current), 20, 0.1)
        set_broken(True)
        pause = rng.uniform(0.0, 3.0)
    elif plan == "heal":
        set_broken(False)
        pause = rng.uniform(0.0, 3.0)
    else:
        pause = rng.uniform(0.0, 2.0)
    toggled = time.monotonic()
    if plan != "aimed":
        await asyncio.sleep(pause)
    if len(leaders(nodes)) != 1:  # between terms: wait for one
        await until(lambda: len(leaders(nodes)) == 1, 30)
    (leader,) = leaders(nodes)
    # a mail is due after the kill: an UPDATE while the incident is open and the OPEN
    # was mailed, the RESOLVED after a heal or the OPEN after a break not mailed yet
    incident = relay.last_opened()
    if plan == "heal":
        expected = incident is not None and not relay.has("RESOLVED", incident)
    elif plan == "break":
        expected = not relay.has("OPEN", after=toggled)
    else:
        expected = broken
    victim = leader.process
    moments: list[float] = []

    def kill() -> None:
        moments.extend((time.time(), time.monotonic()))
        victim.signal(signal.SIGKILL)

    aimed: list[float] = []
    if plan == "aimed":  # 0-10 ms after the relay accepts the leader's next mail
        loop = asyncio.get_running_loop()

        def aim(_mail: Mail) -> None:
            relay.on_accept = None
            aimed.append(time.monotonic())
            loop.call_later(rng.uniform(0.0, AIM), kill)

        relay.on_accept = aim
        await until(lambda: bool(moments), 20)
        relay.on_accept = None
    if not moments:
        kill()
    kill_wall, kill_at = moments
    await victim.process.wait()
    result = Kill(number + 1, plan, leader.name, kill_at, expected_mail=expected,
                  aim=kill_at - aimed[0] if aimed else None, process=victim)
    others = [n for n in nodes if n is not leader]

    def term_seen() -> bool:
        for node in others:
            at = node.process.term_begun_at(kill_wall)
            if at is not None:
                result.to_term = at - kill_wall
                return True
        return False

    await until(term_seen, lease + 20)
    if expected:
        await until(lambda: relay.first_after(kill_at) is not None, lease + 20)
    mail = relay.first_after(kill_at)
    if mail is not None:
        result.to_mail, result.mail = mail.at - kill_at, mail.kind
    result.stragglers = sum(1 for m in relay.mails if m.began <= kill_at < m.at)
    await victim.stop()  # reaps its log reader
    for attempt in range(3):
        try:
            await leader.start()
            break
        except AssertionError as exc:
            print(f"  restart of {leader.name} failed (attempt {attempt + 1}): "
                  f"{str(exc).splitlines()[0]}", flush=True)
            with contextlib.suppress(Exception):
                await leader.process.stop()
            await asyncio.sleep(1.0)
    await until(lambda: len(leaders(nodes)) == 1, 30)
    return result


def report_failover(found: dict[str, Any]) -> None:
    everyone: list[Kill] = found["kills"]
    kills = [k for k in everyone if k.plan != "aimed"]
    aimed = [k for k in everyone if k.plan == "aimed"]
    relay: Relay = found["relay"]
    lease: float = found["lease"]
    target = lease + 5
    print(f"\n1. failover: {len(kills)} kills of the leader at random moments, lease "
          f"{lease:g} s, target <= {target:g} s (lease + 5 s)")
    terms = [k.to_term for k in kills if k.to_term is not None]
    print(f"  kill -> term_begun on another node:      {spread(terms)}")
    steady = [k.to_mail for k in kills if k.plan == "steady" and k.expected_mail
              and k.to_mail is not None]
    print(f"  kill -> next mail, incident open:        {spread(steady)}")
    around = [k.to_mail for k in kills if k.plan != "steady" and k.expected_mail
              and k.to_mail is not None]
    print(f"  kill -> next mail, around OPEN/RESOLVED: {spread(around)}")
    both = [k.to_mail for k in kills if k.expected_mail and k.to_mail is not None]
    print(f"  kill -> next mail, all kills due a mail: {spread(both)}")
    late = [k for k in everyone if (k.to_term is None or k.to_term > target)
            or (k.expected_mail and (k.to_mail is None or k.to_mail > target))]
    measured = terms + both
    verdict = "met" if not late and measured and max(measured) <= target else "MISSED"
    print(f"  target <= {target:g} s: {verdict}")
    for k in late:
        print(f"    slow: kill {k.round} [{k.plan}] of {k.victim}: term {k.to_term}, "
              f"mail {k.to_mail} ({k.mail or 'none'})")
    no_mail = sum(1 for k in kills if not k.expected_mail)
    print(f"  ({no_mail} kills fell where no mail was due: the RESOLVED already sent)")
    if aimed:
        terms = [k.to_term for k in aimed if k.to_term is not None]
        mails = [k.to_mail for k in aimed if k.to_mail is not None]
        print(f"  {len(aimed)} aimed kills, 0-{AIM * 1000:.0f} ms after the relay accepted a "
              f"mail of the leader:\n    kill -> term_begun {spread(terms)}\n"
              f"    kill -> next mail  {spread(mails)}")
    stragglers = sum(k.stragglers for k in everyone)
    print(f"  mails the dying leader had handed over, accepted after its kill: {stragglers}")

    print(f"\n2. duplicates and losses at the relay ({len(relay.mails)} mails, "
          f"{len(everyone)} kills)")
    by_id = Counter((m.message_id, m.rcpt) for m in relay.mails)
    duplicates = [(key, n) for key, n in by_id.items() if n > 1]
    opens: dict[str, set[str]] = defaultdict(set)
    open_receipts: Counter[str] = Counter()
    resolved: Counter[str] = Counter()
    threads: dict[str, set[int]] = defaultdict(set)
    for m in relay.mails:
        threads[m.incident].add(m.number)
        if m.kind == "OPEN":
            opens[m.incident].add(m.message_id)
            open_receipts[m.incident] += 1
        elif m.kind == "RESOLVED":
            resolved[m.incident] += 1
    print(f"  {'incident':<22} OPEN  RESOLVED  mails  numbers")
    for incident in sorted(threads):
        numbers = sorted(threads[incident])
        print(f"  {incident:<22} {open_receipts[incident]:>4}  {resolved[incident]:>8}  "
              f"{sum(1 for m in relay.mails if m.incident == incident):>5}  "
              f"0..{numbers[-1]}")
    duplicate_opens = sum(max(0, n - 1) for n in open_receipts.values())
    second_opens = [i for i, ids in opens.items() if len(ids) > 1]
    lost = [i for i in open_receipts if resolved[i] == 0]
    gaps = {i: sorted(set(range(max(ns) + 1)) - ns) for i, ns in threads.items()
            if set(range(max(ns) + 1)) - ns}
    after_end = [m for m in relay.mails if m.kind != "RESOLVED" and any(
        r.incident == m.incident and r.kind == "RESOLVED" and r.number < m.number
        for r in relay.mails)]
    print(f"  duplicate OPEN receipts: {duplicate_opens} (target 0); "
          f"incidents with two different OPENs: {len(second_opens)}")
    print(f"  incidents without RESOLVED at the end: {len(lost)} (target 0) {lost or ''}")
    print(f"  mails received twice (same Message-ID and recipient): {len(duplicates)}")
    for (ident, rcpt), n in duplicates:
        copies = [m for m in relay.mails if m.message_id == ident and m.rcpt == rcpt]
        second = copies[1].at
        before = [k for k in everyone if k.at < second]
        cause = "no kill before"
        if before:
            k = before[-1]
            had = "had" if k.logged_sent(copies[0]) else "had NOT"
            cause = (f"kill {k.round} [{k.plan}] {(copies[0].at - k.at) * -1000:.1f} ms after "
                     f"the relay's 250 (the killed leader {had} logged mail_sent), "
                     f"copy 2 at +{second - k.at:.2f} s")
        print(f"    {ident} to {','.join(rcpt)}: {n} times, {copies[0].kind}; {cause}")
    for k in aimed:
        mail = next((m for m in reversed(relay.mails) if m.at <= k.at), None)
        if mail is not None:
            again = by_id[(mail.message_id, mail.rcpt)] > 1
            print(f"    aimed kill {k.round}: {(k.aim or 0) * 1000:5.1f} ms after the 250 of "
                  f"{mail.kind} #{mail.number}; mail_sent logged: "
                  f"{'yes' if k.logged_sent(mail) else 'no '}; sent again: "
                  f"{'yes' if again else 'no'}")
    print(f"  gaps in a thread's numbering (a message never delivered): {gaps or 'none'}")
    print(f"  mails after a thread's RESOLVED: {len(after_end)}")
    for m in after_end:
        print(f"    {m.message_id} {m.kind}")
    report_logs(found["nodes"])


EXPECTED = {"probe_failed", "probe_overdue", "outage_seen", "outage_confirmed",
            "outage_declared", "outage_ended", "leadership_taken"}  # of a stall and a kill


def save_logs(nodes: list[Node], directory: Path | None, part: str) -> None:
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        for number, daemon in enumerate(node.history):
            path = directory / f"{part}-{node.name}-{number:02d}.log"
            path.write_text("\n".join(daemon.lines) + "\n")


def report_logs(nodes: list[Node]) -> None:
    """Warnings and errors the nodes logged, by event; the first of each unexpected one
    quoted."""
    seen: dict[str, tuple[int, str]] = {}
    for node in nodes:
        for daemon in node.history:
            for event in daemon.events():
                level = str(event.get("level", ""))
                if level not in {"warning", "error", "critical"} and event.get(
                        "event") != "<not json>":
                    continue
                name = f"{level or '?'} {event.get('event')}"
                count, first = seen.get(name, (0, ""))
                line = first or f"{node.name}: {json.dumps(event)[:400]}"
                seen[name] = (count + 1, line)
    print("\n  warnings and errors in the nodes' logs (all processes, killed ones too):")
    expected = {name: count for name, (count, _) in seen.items()
                if name.split()[-1] in EXPECTED}
    print("    expected: " + (", ".join(f"{count} x {name}" for name, count in sorted(
        expected.items(), key=lambda item: -item[1])) or "none"))
    for name, (count, first) in sorted(seen.items(), key=lambda item: -item[1][0]):
        if name not in expected:
            print(f"    {count:>4} x {name}\n         first: {first}")


# -- 3: scale -----------------------------------------------------------------------------


def psql_number(pg: Postgres, sql: str, dbname: str) -> int:
    return int(pg.psql(sql, dbname=dbname).strip() or 0)


async def scale(args: argparse.Namespace, pg: Postgres) -> dict[str, Any]:
    interval = parse_duration(args.scale_interval).total_seconds()
    new_database(pg, "scale")
    servers = subprocess.Popen([sys.executable, "-m", "bench.servers", "--hold", "2.0"],
                               stdout=subprocess.PIPE, text=True)
    nodes: list[Node] = []
    found: dict[str, Any] = {"targets": args.scale_targets, "interval": interval}
    try:
        assert servers.stdout is not None
        ports = json.loads(servers.stdout.readline())
        url = f"http://127.0.0.1:{ports['http']}/"
        targets = [f"{{name: t{i:05d}, platform: eu, type: http, url: '{url}'}}"
                   for i in range(args.scale_targets)]
        defaults = {"interval": args.scale_interval, "timeout": "5s", "threshold": "2s",
                    "window": "60s"}
        with tempfile.TemporaryDirectory(prefix="ow-bench-scale-") as work:
            for loc in LOCATIONS:
                directory = Path(work) / loc
                directory.mkdir()
                port = free_port()
                config = write_config(directory, pg, "scale", node=f"node-{loc}",
                                      location=loc, port=port, relay_port=ports["smtp"],
                                      lease="15s", targets=targets, defaults=defaults)
                nodes.append(Node(f"node-{loc}", loc, port, config))
            try:
                started = time.monotonic()
                await start_all(nodes)
                if not await until(lambda: len(leaders(nodes)) == 1, 60):
                    raise RuntimeError("no single leader within 60 s")
                found["startup"] = time.monotonic() - started
                await asyncio.sleep(interval + 5)  # every target scheduled once, settled
                (leader,) = leaders(nodes)
                followers = [n for n in nodes if n is not leader]
                postmaster = pg.pid
                assert postmaster is not None

                def snapshot() -> dict[str, float]:
                    return {"t": time.monotonic(),
                            "rows": psql_number(pg, "SELECT count(*) FROM samples", "scale"),
                            "size": psql_number(
                                pg, "SELECT pg_database_size(current_database())", "scale"),
                            "leader": leader.process.cpu(),
                            "followers": sum(n.process.cpu() for n in followers),
                            "pg": tree_cpu(postmaster),
                            "commits": psql_number(
                                pg, "SELECT xact_commit FROM pg_stat_database"
                                " WHERE datname = 'scale'", "scale")}

                before = snapshot()
                await asyncio.sleep(args.scale_seconds)
                after = snapshot()
                still = leaders(nodes)
                found["same_leader"] = still == [leader]
                seconds = after["t"] - before["t"]
                found.update(
                    seconds=seconds, leader=leader.name,
                    rows=after["rows"] - before["rows"],
                    per_second=(after["rows"] - before["rows"]) / seconds,
                    leader_cpu=(after["leader"] - before["leader"]) / seconds,
                    follower_cpu=(after["followers"] - before["followers"]) / seconds / 2,
                    pg_cpu=(after["pg"] - before["pg"]) / seconds,
                    growth=(after["size"] - before["size"]) / seconds,
                    commits=(after["commits"] - before["commits"]) / seconds,
                    size=after["size"],
                    bad=psql_number(pg, "SELECT count(*) FROM samples WHERE result <> 'ok'",
                                    "scale"),
                    samples_size=psql_number(
                        pg, "SELECT pg_total_relation_size('samples')", "scale"),
                    total_rows=psql_number(pg, "SELECT count(*) FROM samples", "scale"))
            finally:
                await asyncio.gather(*(n.stop() for n in nodes))
                found["nodes"] = nodes
    finally:
        servers.terminate()
        servers.wait()
    return found


SIZES = (100, 1)  # samples per apply(): a batch, and what the daemon's writer really sends


async def write_cost(pg: Postgres, *, samples: int = 5000, rounds: int = 3
                     ) -> dict[tuple[str, int, bool], float]:
    """Microseconds per sample of ``apply(Changes(samples, verdicts))`` per backend, in
    batches of 100 samples and of 1, with and without the per-target prune (``keep_after``)
    the daemon adds to every sample; the best of ``rounds`` runs, the kinds taking turns."""
    new_database(pg, "micro")
    url = f"postgresql://{pg.user}@{pg.host}:{pg.port}/micro"
    result: dict[tuple[str, int, bool], float] = {}

    def unit(k: int, size: int, *, prune: bool) -> Changes:
        start = 1_800_000_000.0 + k * 10.0
        names = [f"t{j:05d}" for j in range(size)]
        return Changes(
            samples=[StoredSample(name, start + j * 0.01, 0.012, "ok", None, False)
                     for j, name in enumerate(names)],
            verdicts={name: Verdict(runs=(Run(start, Status.GOOD),), last_start=start)
                      for name in names},
            # in steady state each new sample prunes one old one: so here, after 10 units
            keep_after=(dict.fromkeys(names, start - 100.0) if prune else {}))

    offset = 0

    async def measure(store: Any, backend: str, size: int, *, prune: bool) -> None:
        nonlocal offset
        for _ in range(20):  # warm-up: connections, statements, pages, the first prunes
            await store.apply(unit(offset, size, prune=prune))
            offset += 1
        units = samples // size
        started = time.perf_counter()
        for _ in range(units):
            await store.apply(unit(offset, size, prune=prune))
            offset += 1
        cost = (time.perf_counter() - started) / (units * size) * 1e6
        key = (backend, size, prune)
        result[key] = min(cost, result.get(key, cost))

    async def turns(store: Any, backend: str) -> None:
        for _ in range(rounds):
            for size in SIZES:
                for prune in (False, True):
                    await measure(store, backend, size, prune=prune)

    postgres = await PostgresStore.open(url, password=pg.password, location="a")
    try:
        await turns(postgres, "postgres")
    finally:
        await postgres.close()
    with tempfile.TemporaryDirectory(prefix="ow-bench-sqlite-") as work:
        sqlite = await SqliteStore.open(Path(work) / "state.db")  # on its thread, as run
        try:
            await turns(sqlite, "sqlite")
        finally:
            await sqlite.close()
    return result


def report_scale(found: dict[str, Any], cost: dict[tuple[str, int, bool], float]) -> None:
    targets, interval = found["targets"], found["interval"]
    rate = targets / interval
    print(f"\n3. scale: run here: 3 nodes x {targets:,} HTTP targets at a {interval:g} s "
          f"interval ({rate:,.0f} probes/s per node, {3 * rate:,.0f} samples/s expected)")
    print(f"  asked for: 3 x 10,000 targets at 60 s ({10_000 / 60:,.0f} probes/s per node, "
          f"{3 * 10_000 / 60:,.0f} samples/s)")
    if "seconds" not in found:
        print("  (not measured: the run failed before)")
        return
    print(f"  start-up of the three nodes to one leader: {found['startup']:.1f} s")
    print(f"  measured over {found['seconds']:.0f} s, leader {found['leader']}"
          f"{'' if found['same_leader'] else ' (THE LEADER CHANGED meanwhile)'}")
    print(f"  samples written: {found['per_second']:,.1f}/s ({found['rows']:,} rows; "
          f"{found['bad']} not ok of {found['total_rows']:,} in the table)")
    print(f"  transactions committed: {found['commits']:,.0f}/s, "
          f"{found['per_second'] / max(found['commits'], 1e-9):.1f} samples per transaction")
    print(f"  CPU, leader:       {found['leader_cpu']:.3f} s/s "
          f"({found['leader_cpu'] * 1000 / rate:.2f} ms per own probe)")
    print(f"  CPU, per follower: {found['follower_cpu']:.3f} s/s")
    print(f"  CPU, PostgreSQL:   {found['pg_cpu']:.3f} s/s "
          f"({found['pg_cpu'] * 1e6 / max(found['per_second'], 1e-9):.0f} µs per sample)")
    growth = found["growth"]
    per_sample = growth / max(found["per_second"], 1e-9)
    print(f"  database growth: {growth * 3600 / 1e6:,.1f} MB/h, "
          f"{growth * 86400 / 1e9:,.2f} GB/day extrapolated "
          f"({per_sample:.0f} bytes per sample; database now {found['size'] / 1e6:,.1f} MB, "
          f"samples table {found['samples_size'] / 1e6:,.1f} MB)")
    window = 60.0 + 2 * interval + 5.0 + 3600.0  # window + coverage gap + KEEP_SAMPLES
    print(f"  retention: samples older than window + coverage gap + 1 h are pruned, so the "
          f"table levels off near {per_sample * found['per_second'] * window / 1e6:,.0f} MB "
          f"after {window / 3600:.2f} h; the per-day figure holds for the first hour only")
    print("  cost per sample write, µs, apply() of samples with their verdicts "
          "(PostgreSQL with fsync off):")
    print(f"    {'':<12}" + "".join(f"{f'{size} per apply':>14}{'+ prune':>10}"
                                    for size in SIZES))
    for backend, title in (("postgres", "PostgreSQL"), ("sqlite", "SQLite")):
        print(f"    {title:<12}" + "".join(
            f"{cost[(backend, size, prune)]:>{10 if prune else 14}.1f}"
            for size in SIZES for prune in (False, True)))
    report_logs(found.get("nodes", []))


# -- main ---------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    if postgres_binaries() is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    pg = await asyncio.to_thread(Postgres.start)
    try:
        print(f"PostgreSQL on 127.0.0.1:{pg.port} (fsync off); {os.cpu_count()} cores; "
              f"load average {os.getloadavg()[0]:.2f} before")
        if args.only in {None, "failover"}:
            started = time.monotonic()
            found = await failover(args, pg)
            save_logs(found["nodes"], args.logs, "failover")
            report_failover(found)
            print(f"  ({time.monotonic() - started:.0f} s; load average now "
                  f"{os.getloadavg()[0]:.2f})")
        if args.only in {None, "scale"}:
            started = time.monotonic()
            measured = await scale(args, pg)
            save_logs(measured.get("nodes", []), args.logs, "scale")
            cost = await write_cost(pg)
            report_scale(measured, cost)
            print(f"  ({time.monotonic() - started:.0f} s; load average now "
                  f"{os.getloadavg()[0]:.2f})")
    finally:
        await asyncio.to_thread(pg.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--aimed", type=int, default=6,
                        help="more kills, each 0-10 ms after the relay accepted a mail")
    parser.add_argument("--lease", default="3s", help="cluster.lease (3 s at least)")
    parser.add_argument("--scale-targets", type=int, default=2000)
    parser.add_argument("--scale-interval", default="10s")
    parser.add_argument("--scale-seconds", type=float, default=60.0)
    parser.add_argument("--only", choices=["failover", "scale"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--logs", type=Path, help="write every node process's log here")
    arguments = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    configure_logging("error", stream=sys.stderr)
    asyncio.run(main(arguments))
