"""Three real ``outagewatch run`` nodes (locations a, b, c) on one PostgreSQL, each probing the
same Web-Mail through its own faulting proxy (its location's network), aiosmtpd as the relay.

Quorum 2 of 3: one location broken mails nothing; two broken give one OPEN naming both; the
leader killed or cut from the database hands the thread over without a second OPEN and
without two leaders' mails interleaving; PostgreSQL restarted, the nodes carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from tests.helpers.daemon import DaemonProcess, free_port, wait
from tests.helpers.faultproxy import Fault, FaultProxy

LOCATIONS = ("a", "b", "c")
LEASE = "3s"
TOKEN = "t0ken-0123456789abcdef"
READ = "r3ad-t0ken-0123456789abcdef"
TITLE = "Statut des services \u2013 été"  # an en dash and accents
# tiny rules, with runs that never overlap (interval > timeout) as in production
RULES = {"interval": "0.5s", "timeout": "0.45s", "threshold": "0.3s", "window": "1.5s",
         "recover_after": "2"}


@dataclass
class Node:
    name: str
    location: str
    port: int
    web: FaultProxy  # this location's network to the service
    db: FaultProxy  # this node's network to the database
    config: Path
    daemon: DaemonProcess | None = None

    async def start(self) -> Node:
        self.daemon = await DaemonProcess(self.config).start(self.port)
        return self

    @property
    def process(self) -> DaemonProcess:
        assert self.daemon is not None
        return self.daemon

    def sent(self) -> list[dict]:
        return [e for e in self.process.events() if e.get("event") == "mail_sent"]

    def leads(self) -> bool:
        events = [e["event"] for e in self.process.events()
                  if e.get("event") in {"term_begun", "term_ended"}]
        return bool(events) and events[-1] == "term_begun"


def node_config(tmp_path: Path, db, node: str, location: str, port: int, web_port: int,
                db_port: int, relay_port: int, token: str, server: str = "") -> Path:
    """``server``: more keys of the server section, e.g. a read token and the page's
    title."""
    (tmp_path / "db-password").write_text(db.password + "\n")
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "read").write_text(READ + "\n")
    rules = ", ".join(f"{k}: {v}" for k, v in RULES.items())
    extra = f", {server}".replace("READ_FILE", f'"{tmp_path}/read"') if server else ""
    text = f"""
server: {{listen: "127.0.0.1:{port}", token_file: "{tmp_path}/token"{extra}}}
defaults: {{{rules}}}
platforms: {{eu: {{incident_recipients: [oncall@example.com], info_recipients: [i@example.com]}}}}
targets:
  - {{name: webmail-eu, platform: eu, type: http, url: "http://127.0.0.1:{web_port}/",
      impact: "Users cannot reach Web-Mail."}}
notify:
  smtp: {{host: 127.0.0.1, port: {relay_port}, tls: none}}
  sender: "NOC <noc@example.com>"
  update_interval: 2s
  coalesce: 0.3s
  retry_backoff: 0.2s
  retry_max: 1s
state:
  url: "postgresql://{db.server.user}@127.0.0.1:{db_port}/{db.name}"
  password_file: "{tmp_path}/db-password"
cluster: {{node: {node}, location: {location}, locations: [a, b, c], quorum: 2,
           lease: {LEASE}}}
"""
    path = tmp_path / f"{node}.yaml"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def three_nodes(tmp_path, db, http_server, relay, server: str = ""):
    nodes: list[Node] = []
    async with contextlib.AsyncExitStack() as stack:
        for location in LOCATIONS:
            web = await stack.enter_async_context(FaultProxy(http_server.port))
            dbp = await stack.enter_async_context(FaultProxy(db.server.port))
            port = free_port()
            directory = tmp_path / location
            directory.mkdir()
            config = node_config(directory, db, f"node-{location}", location, port, web.port,
                                 dbp.port, relay.port, TOKEN, server)
            nodes.append(Node(f"node-{location}", location, port, web, dbp, config))
        for node in nodes:
            await node.start()
        try:
            await wait(lambda: sum(n.leads() for n in nodes) == 1, 15, "a leader")
            yield nodes
        finally:
            for node in nodes:
                if node.daemon is not None:
                    with contextlib.suppress(ProcessLookupError):
                        node.process.signal(signal.SIGCONT)  # a test may have stopped it
                    await node.process.stop()


@pytest.fixture(name="cluster")
async def _cluster(tmp_path, db, http_server, relay):
    async with three_nodes(tmp_path, db, http_server, relay) as nodes:
        yield nodes


@pytest.fixture(name="read_cluster")
async def _read_cluster(tmp_path, db, http_server, relay):
    """The cluster with an internal page behind a read token, and a title beyond ASCII."""
    async with three_nodes(tmp_path, db, http_server, relay,
                           f'read_token_file: READ_FILE, status_page: {{title: "{TITLE}"}}') \
            as nodes:
        yield nodes


def leader_of(nodes: list[Node]) -> Node:
    (leader,) = [n for n in nodes if n.leads()]
    return leader


async def incident_open(cluster: list[Node], relay, db) -> None:
    """Every location's network to the service broken: the cluster mails an OPEN, and its
    delivery is on record. (A leader killed between the relay's 250 and that commit sends it
    again, with the same Message-ID: the one duplicate the README owns up to, which
    ``bench/cluster.py`` counts. These tests cut the leader after it, where none may happen.)"""
    await asyncio.sleep(1.0)
    for node in cluster:
        node.web.mode = Fault("stall")
    await wait(lambda: "OPEN" in relay.kinds(), 15, "OPEN")
    await wait(lambda: "sent" in db.psql("SELECT status FROM outbox WHERE kind = 'open'"), 15,
               "the OPEN's delivery on record")


async def status(node: Node) -> dict:
    return json.loads((await node.process.get("/api/v1/status"))[1])


async def test_one_location_broken_mails_nothing_and_shows_it(cluster, relay):
    a, _b, _c = cluster
    await asyncio.sleep(1.0)
    a.web.mode = Fault("stall")
    await wait(lambda: a.process.has_event("outage_seen"), 10, "a sees the outage")
    leader = leader_of(cluster)

    async def described() -> dict:
        (target,) = (await status(leader))["targets"]
        return target["locations"]

    for _ in range(40):
        if (await described()).get("a") == "outage":
            break
        await asyncio.sleep(0.1)
    assert {"a": "outage", "b": "ok", "c": "ok"} == await described()
    (target,) = (await status(leader))["targets"]
    results = target["location_results"]
    assert ["a", "b", "c"] == sorted(results)
    assert (True, "timeout") == (results["a"]["bad"], results["a"]["result"])
    assert (False, "ok") == (results["b"]["bad"], results["b"]["result"])
    await asyncio.sleep(2.0)  # well past the window
    assert [] == relay.mails, "one location of three is no outage"


async def test_two_locations_broken_give_one_open_naming_both(cluster, relay):
    a, b, _c = cluster
    await asyncio.sleep(1.0)
    a.web.mode = Fault("stall")
    b.web.mode = Fault("stall")
    await wait(lambda: "OPEN" in relay.kinds(), 15, "OPEN")
    await asyncio.sleep(1.0)
    assert 1 == relay.kinds().count("OPEN")
    (_, mail), *_ = relay.mails
    body = mail.get_payload(decode=True).decode()
    assert "seen from a and b; c answered normally" in body
    a.web.mode = b.web.mode = Fault()
    await wait(lambda: "RESOLVED" in relay.kinds(), 15, "RESOLVED")


async def test_the_leader_killed_mid_incident_the_thread_goes_on(cluster, relay, db):
    await incident_open(cluster, relay, db)
    leader = leader_of(cluster)
    leader.process.signal(signal.SIGKILL)
    await leader.process.stop()
    others = [n for n in cluster if n is not leader]
    await wait(lambda: any(n.leads() for n in others), 15, "a new leader")
    await wait(lambda: "UPDATE" in relay.kinds(), 15, "the UPDATE cadence goes on")
    for node in cluster:
        node.web.mode = Fault()
    await wait(lambda: "RESOLVED" in relay.kinds(), 15, "RESOLVED from the new leader")
    await asyncio.sleep(1.0)
    kinds = relay.kinds()
    assert 1 == kinds.count("OPEN"), kinds
    assert 1 == kinds.count("RESOLVED"), kinds
    subjects = {str(m["Subject"]).split()[1] for _, m in relay.mails}
    assert 1 == len(subjects), "one incident, one thread"


async def test_a_leader_cut_from_the_database_stops_before_the_next_mails(cluster, relay,
                                                                       db):
    await incident_open(cluster, relay, db)
    leader = leader_of(cluster)
    leader.db.cut()
    others = [n for n in cluster if n is not leader]
    await wait(lambda: any(n.leads() for n in others), 20, "a new leader")
    await wait(lambda: leader.process.has_event("leadership_lost"), 20, "the old one fenced")
    new = next(n for n in others if n.leads())
    await wait(lambda: len(new.sent()) >= 1, 15, "the new leader mails")
    last_old = max((e["timestamp"] for e in leader.sent()), default="")
    first_new = min(e["timestamp"] for e in new.sent())
    assert last_old < first_new, "no mail of the old leader after the new one's first"
    kinds = relay.kinds()
    assert 1 == kinds.count("OPEN"), kinds


async def test_postgres_restarted_the_nodes_carry_on(cluster, relay, db):
    await incident_open(cluster, relay, db)
    await asyncio.to_thread(db.server.restart)
    for node in cluster:
        node.web.mode = Fault()
    await wait(lambda: "RESOLVED" in relay.kinds(), 30, "RESOLVED after the restart")
    for node in cluster:
        await node.process.wait_for(node.process.ready, timeout=20, what="ready again")
    assert 1 == relay.kinds().count("OPEN")


async def test_a_second_node_with_the_same_name_is_refused_in_one_line(cluster, tmp_path, db,
                                                                      relay, http_server):
    a = cluster[0]
    port = free_port()
    directory = tmp_path / "twin"
    directory.mkdir()
    config = node_config(directory, db, a.name, "b", port, http_server.port, db.server.port,
                         relay.port, TOKEN)
    twin = DaemonProcess(config)
    with pytest.raises(AssertionError, match="daemon exited"):
        await twin.start(port)
    assert 2 == await twin.stop()
    refusal = [line for line in twin.lines if line.startswith("outagewatch:")]
    assert 1 == len(refusal), twin.lines
    assert "cluster.node 'node-a' is taken by node 'node-a', which is running" in refusal[0]


async def test_a_change_sent_to_a_follower_is_the_leaders_and_status_names_every_node(
        cluster, relay):
    """The CLI need not know who leads: a follower forwards a change to the leader, which
    mails once; ``outagewatch cluster status`` on any node lists the nodes and the leader."""
    follower = next(n for n in cluster if not n.leads())
    start = datetime.now(UTC) + timedelta(minutes=5)
    code, body = await follower.process.request(
        "POST", "/api/v1/maintenance", token=TOKEN,
        json_body={"id": "db-upgrade", "platform": "eu", "kind": "emergency",
                   "start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat(),
                   "description": "database upgrade"})
    assert 201 == code, body
    await wait(lambda: "ANNOUNCEMENT" in relay.kinds(), 10, "the announcement")
    code, body = await follower.process.get("/api/v1/maintenance")
    assert 200 == code
    assert ["db-upgrade"] == [w["id"] for w in json.loads(body)["windows"]]
    await asyncio.sleep(0.5)
    assert 1 == relay.kinds().count("ANNOUNCEMENT")

    leader = leader_of(cluster)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outagewatch", "cluster", "status",
        "--url", f"http://127.0.0.1:{follower.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert 0 == process.returncode, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith(f"leader: {leader.name} (epoch ")
    assert ["node-a", "node-b", "node-c"] == [line.split()[0] for line in lines[2:]]
    assert all("live" in line.split() for line in lines[2:])


async def test_locations_gone_blind_leave_the_target_degraded_loudly_and_no_mail(
        cluster, relay):
    """Nodes that die leave their locations blind: with fewer locations reporting than the
    quorum, the one left decides alone, and the leader says so in its metrics, logs and the
    status API."""
    leader = leader_of(cluster)
    gone = [n for n in cluster if n is not leader]
    for node in gone:
        node.process.signal(signal.SIGKILL)
        await node.process.stop()

    async def degraded() -> bool:
        text = await leader.process.metrics()
        return ('outagewatch_cluster_target_degraded{platform="eu",target="webmail-eu",'
                'type="http"} 1.0') in text

    for _ in range(100):
        if await degraded():
            break
        await asyncio.sleep(0.1)
    assert await degraded()
    assert ('outagewatch_cluster_locations_reporting{platform="eu",target="webmail-eu",'
            'type="http"} 1.0') in await leader.process.metrics()
    (target,) = (await status(leader))["targets"]
    assert {node.location: "blind" for node in gone} == {
        name: state for name, state in target["locations"].items() if name != leader.location}
    assert leader.process.has_event("cluster_degraded")
    assert [] == relay.mails


async def test_a_node_cut_from_the_database_probes_on_says_so_and_catches_up(cluster, relay):
    """Cut off, a node keeps probing and deciding in memory, answers not ready, and writes
    what it kept once the database is back: the leader sees its location again."""
    leader = leader_of(cluster)
    cut = next(n for n in cluster if n is not leader)
    cut.db.cut()

    async def not_ready() -> bool:
        return not await cut.process.ready()

    await cut.process.wait_for(not_ready, timeout=20, what="not ready while cut off")
    code, body = await cut.process.get("/readyz")
    assert 503 == code
    assert "database" in body or "state" in body, body

    def runs(text: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("outagewatch_probes_total{"))

    before = runs(await cut.process.metrics())
    await asyncio.sleep(1.5)
    assert runs(await cut.process.metrics()) > before, "it probes on while cut off"

    cut.db.mode = Fault()
    await cut.process.wait_for(cut.process.ready, timeout=30, what="ready again")
    for _ in range(50):
        (target,) = (await status(leader))["targets"]
        if target["locations"].get(cut.location) == "ok":
            break
        await asyncio.sleep(0.2)
    assert "ok" == target["locations"][cut.location]
    assert [] == relay.mails


async def test_an_incident_opened_by_hand_through_a_follower_outlives_its_leader(cluster,
                                                                                relay):
    """A customer's report sent to any node: the leader opens it once; killed, the next
    leader knows it (the book is in PostgreSQL) and resolves it by hand in the same thread."""
    follower = next(n for n in cluster if not n.leads())
    code, body = await follower.process.request(
        "POST", "/api/v1/incidents", token=TOKEN,
        json_body={"platform": "eu", "severity": 2, "components": ["Calendar sync"],
                   "impact": "Invitations are not delivered", "ticket": "OX-1"})
    assert 201 == code, body
    incident = json.loads(body)["id"]
    await wait(lambda: relay.kinds() == ["OPEN"], 10, "one OPEN")
    leader = leader_of(cluster)
    leader.process.signal(signal.SIGKILL)
    await leader.process.stop()
    others = [n for n in cluster if n is not leader]
    await wait(lambda: any(n.leads() for n in others), 15, "a new leader")
    code, body = await others[0].process.request(
        "POST", f"/api/v1/incidents/{incident.lower()}/resolve", token=TOKEN,
        json_body={"note": "fixed"})
    assert 200 == code, body
    await wait(lambda: "RESOLVED" in relay.kinds(), 10, "RESOLVED")
    await asyncio.sleep(0.5)
    assert relay.kinds() == ["OPEN", "RESOLVED"]
    assert all("OX-1" in str(m["Subject"]) for _, m in relay.mails)
    assert relay.mails[1][1]["References"].split()[0] == relay.mails[0][1]["Message-ID"]


def service_state(page: str, name: str) -> str:
    """The state the page gives a service (its row's state cell)."""
    match = re.search(rf'{re.escape(name)}.*?class="state st-[a-z]+"[^>]*>([^<]+)<', page,
                      re.DOTALL)
    assert match, f"no row for {name}"
    return match.group(1).strip()


async def test_the_status_page_on_any_node_shows_the_clusters_view(cluster, relay, db):
    """The leader serves the page from the locations' consensus and a follower forwards it:
    one location failing is degraded, not an outage; the quorum's outage and its incident
    show on every node, and in the feed."""
    a = cluster[0]
    await asyncio.sleep(1.0)
    a.web.mode = Fault("stall")
    await wait(lambda: a.process.has_event("outage_seen"), 10, "a sees the outage")
    follower = next(n for n in cluster if not n.leads())
    states = []
    for _ in range(40):
        status, page = await follower.process.get("/")
        assert 200 == status, page
        states.append(service_state(page, "webmail-eu"))
        if states[-1] == "Degraded performance":
            break
        await asyncio.sleep(0.1)
    assert "Degraded performance" == states[-1], states
    await incident_open(cluster, relay, db)
    (incident,) = {str(m["Subject"]).split()[1] for _, m in relay.mails}
    for node in cluster:
        status, page = await node.process.get("/")
        assert (200, "Major outage") == (status, service_state(page, "webmail-eu")), node.name
        assert incident in page
    status, feed = await follower.process.get("/feed.atom")
    assert 200 == status
    assert incident in feed


async def fetch(node: Node, path: str, token: str | None = None):
    """(status, headers, body, seconds taken) of a GET as a browser sends it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{node.port}{path}", headers=headers,
            timeout=aiohttp.ClientTimeout(total=30)) as answer:
        body = await answer.read()
        return answer.status, answer.headers, body, time.monotonic() - started


def follower_of(nodes: list[Node]) -> Node:
    return next(n for n in nodes if not n.leads())


async def test_a_forwarded_page_keeps_the_leaders_headers(read_cluster):
    """Through a follower the page and the feed carry what the leader's carry: the type
    with its charset, the content policy (no script, nothing fetched), nosniff, no-cache."""
    leader, follower = leader_of(read_cluster), follower_of(read_cluster)
    for path in ("/", "/feed.atom"):
        status_l, head_l, _, _ = await fetch(leader, path, READ)
        status_f, head_f, body_f, _ = await fetch(follower, path, READ)
        assert (200, 200) == (status_l, status_f)
        assert TITLE.encode() in body_f
        for name in ("Content-Type", "Content-Security-Policy", "X-Content-Type-Options",
                     "Cache-Control"):
            assert head_l.get(name) == head_f.get(name), (path, name)


async def test_the_read_token_is_asked_for_through_a_follower(read_cluster):
    follower = follower_of(read_cluster)
    assert 401 == (await fetch(follower, "/"))[0]
    status, _, body, _ = await fetch(follower, "/", "wrong-token-0123456789")
    assert 403 == status
    assert TITLE.encode() not in body
    assert 400 == (await fetch(follower, "/status?refresh=abc", READ))[0]


async def test_a_hung_leader_neither_hangs_a_follower_nor_shows_its_address(read_cluster):
    """SIGSTOP on the leader (a hung process, a partitioned host): a follower answers a
    visitor within seconds, from the next leader or with a plain 503, never naming the
    old leader's address."""
    leader, follower = leader_of(read_cluster), follower_of(read_cluster)
    leader.process.signal(signal.SIGSTOP)
    try:
        status, _, body, took = await fetch(follower, "/")
    finally:
        leader.process.signal(signal.SIGCONT)
    assert status in {401, 503}, body
    assert f":{leader.port}".encode() not in body
    assert took < 10.0  # 3 s, once more at a new leader; it was 15 s, then a 503


async def test_a_killed_leader_is_not_named_to_visitors(read_cluster):
    leader, follower = leader_of(read_cluster), follower_of(read_cluster)
    leader.process.signal(signal.SIGKILL)
    status, _, body, _ = await fetch(follower, "/")
    assert status in {401, 503}, body
    assert f":{leader.port}".encode() not in body


async def test_a_follower_cut_from_the_database_answers_the_page_503(read_cluster):
    follower = follower_of(read_cluster)
    follower.db.cut()
    status, _, body, took = await fetch(follower, "/", READ)
    assert 503 == status, body[:300]
    assert took < 10.0  # 3 s, once more at a new leader; it was 15 s, then a 503


async def test_a_deposed_leader_reports_no_outbox(cluster, relay, db):
    """Cut from the database mid-incident and deposed, the old leader holds no outbox any
    more: its outbox gauges read 0 (else OutagewatchMailsUnrecorded fires on a follower)."""
    await incident_open(cluster, relay, db)
    leader = leader_of(cluster)
    leader.db.cut()
    await wait(lambda: leader.process.has_event("leadership_lost"), 20, "the old one fenced")
    await wait(lambda: leader.process.has_event("term_ended"), 20, "its term ended")
    metrics = await leader.process.metrics()
    for name in ("outagewatch_cluster_leader", "outagewatch_outbox_unrecorded",
                 "outagewatch_outbox_pending"):
        (line,) = [x for x in metrics.splitlines() if x.startswith(name + " ")]
        assert 0 == float(line.split()[1]), line
