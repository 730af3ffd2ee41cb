"""A cluster node: the composition root of ``outagewatch run`` when ``state.url`` is set.

Every node, always: probes the targets of its location, runs the evaluator per target and
publishes its location's view of each (``Changes.views``) with its samples and verdicts
through its own writer; holds the targets under maintenance from the windows in the shared
store; serves ``/metrics``, ``/healthz``, ``/readyz`` and the API (changes forwarded to the
leader); takes part in the election (``leadership.py``).

The leader, for as long as its term lasts (elected to deposed): loads the books, windows and
outbox, and runs the consensus (``consensus.py``) over the views that change, the incident
desk, the maintenance unit and the drainer, all writing through a writer whose every
transaction checks the term's epoch (a fenced store). A deposed leader stops them at once; a
stale one cannot write. Mails go out only within the lease (see ``notify/drainer.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web

from outagewatch import __version__, systemd
from outagewatch.api import FORWARDED, Api, Leading, error
from outagewatch.app import (
    DRAIN_GRACE,
    HOUSEKEEPING,
    Daemon,
    announce_stopping,
    backoff_of,
    channels_of,
    labels_of,
    log_config_warnings,
    mail_monthly_reports,
    measure_availability,
    metrics_for,
    outbox_of,
    pruning,
    start_watchdog,
)
from outagewatch.cluster.consensus import Consensus
from outagewatch.cluster.leadership import Leadership, Seat, SeatTaken
from outagewatch.cluster.page import at_the_leader, page_of
from outagewatch.config import ClusterConfig
from outagewatch.core import maintenance as windows_rules
from outagewatch.core import quorum
from outagewatch.core.evaluator import Health
from outagewatch.engine import Composer, Desk, Engine, Maintenance, Timers, Writer
from outagewatch.engine.engine import OBSERVATIONS_IN_MAIL
from outagewatch.errors import ListenError, OutagewatchError
from outagewatch.faults import Faults, supervise
from outagewatch.history import History
from outagewatch.looplag import LoopLag
from outagewatch.model import iso_utc
from outagewatch.probes import ProbeContext, new_http_session, run_probe
from outagewatch.recorder import SampleRecorder
from outagewatch.scheduler import MAX_NAP, Scheduler
from outagewatch.statuspage.live import DaemonStatusSource
from outagewatch.store import StoreError
from outagewatch.store.postgres import PostgresStore
from outagewatch.topology import build_topology
from outagewatch.web import WebServer, build_app

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from outagewatch.config import Settings, Target
    from outagewatch.core.quorum import Seen
    from outagewatch.metrics import Metrics
    from outagewatch.model import Rule, Sample
    from outagewatch.notify import Drainer
    from outagewatch.notify.queue import Queue
    from outagewatch.statuspage.source import StatusSource

log = structlog.get_logger("outagewatch.cluster")

VIEWS_POLL = 0.5  # seconds between the leader's reads of the views that changed
WINDOWS_POLL = 2.0  # seconds between a node's reads of the maintenance windows
STATUS_POLL = 5.0  # seconds between a node's reads of the cluster's nodes, for metrics
FORWARD_TIMEOUT = 15.0
PAGE_FORWARD_TIMEOUT = 3.0  # a visitor's page or feed: tried once more at a new leader
# the leader's answer headers a forwarded answer keeps
PASSED_BACK = frozenset({"content-type", "cache-control", "content-security-policy",
                         "x-content-type-options", "vary", "retry-after"})
NODE_FORGOTTEN = 86400.0  # a node silent this long leaves the node list (and its alert)
LINGER = 0.05  # seconds a node's writer gathers samples and views into one transaction


class SeatRefused(OutagewatchError):
    """This node's name or location is another running node's (one line, exit 2)."""


def cluster_of(settings: Settings) -> ClusterConfig:
    """The cluster section; ``state.url`` alone is a cluster of one node."""
    return settings.cluster or ClusterConfig.model_validate({})


def advertised(settings: Settings, port: int) -> str:
    """Where the other nodes reach this node's API (for forwarded changes)."""
    cluster = cluster_of(settings)
    if cluster.advertise:
        return cluster.advertise
    host = settings.server.host
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - a listen address, compared
        host = socket.gethostname()
    return f"{host}:{port}"


@dataclass
class Term:
    """The leader's parts for one term of leadership."""

    epoch: int
    writer: Writer
    queue: Queue
    drainer: Drainer
    composer: Composer
    desk: Desk
    maintenance: Maintenance
    consensus: Consensus
    timers: Timers
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    seq: int = 0  # the views read so far

    def leading(self) -> Leading:
        return Leading(self.maintenance, self.desk, self.writer, self.drainer)


class ClusterDaemon(Daemon):
    """``outagewatch run`` on a shared PostgreSQL state."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.cluster = cluster_of(settings)
        self.term: Term | None = None
        self._terms: asyncio.Queue[int | None] = asyncio.Queue()
        self._store: PostgresStore | None = None
        self._leadership: Leadership | None = None
        self._node_faults: Faults | None = None
        self._engine: Engine | None = None
        self._node_writer: Writer | None = None
        self._page_routes: list[web.RouteDef] = []
        self._page_source: StatusSource | None = None
        self._scheduler: Scheduler | None = None
        self._metrics: Metrics | None = None
        self._fatal: BaseException | None = None
        self._term_faults: Faults | None = None
        self._installation = ""

    # -- reads --------------------------------------------------------------------------------

    def readiness(self) -> str | None:
        scheduler, leadership = self._scheduler, self._leadership
        if not self._ready or scheduler is None or not scheduler.running:
            return "starting or stopping"
        if self.clock.monotonic() - scheduler.heartbeat > 10 * MAX_NAP:
            return "scheduler heartbeat is stale"
        if leadership is None or not leadership.seated:
            return "joining the cluster"
        if not leadership.connected:
            return f"the state database is out of reach: {leadership.last_error}"
        assert self._node_faults is not None
        return self._node_faults.blocking()

    def faults(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for faults in (self._node_faults, self._term_faults if self.term else None):
            if faults is not None:
                found.update({name: f.cause for name, f in faults.active().items()})
        return found

    def summary(self) -> str:
        term = self.term
        role = f"leader (epoch {term.epoch})" if term is not None else "follower"
        open_incidents = ([b.open.id for b in term.desk.books().values() if b.open is not None]
                          if term is not None else [])
        return (f"{self.cluster.node} at {self.cluster.location}, {role}; "
                f"{len(self.settings.targets)} targets; open incidents: "
                f"{', '.join(open_incidents) or 'none' if term is not None else 'see the leader'}")

    # -- the node -----------------------------------------------------------------------------

    async def run(self) -> None:
        settings, cluster = self.settings, self.cluster
        state_cfg = settings.state
        assert state_cfg.url is not None
        store = await PostgresStore.open(
            state_cfg.url, password=state_cfg.secret(), location=cluster.location,
            node=cluster.node, sslmode=state_cfg.sslmode,
            sslrootcert=str(state_cfg.sslrootcert) if state_cfg.sslrootcert else None)
        self._store = store
        try:
            async with new_http_session() as session:
                await self._serve(store, session)
        finally:
            await store.close()
        if self._fatal is not None:
            raise self._fatal

    async def _serve(self, store: PostgresStore, session: aiohttp.ClientSession) -> None:
        settings, clock, cluster = self.settings, self.clock, self.cluster
        server = settings.server
        api, looplag = await self._build(store, session)
        engine, writer, scheduler = self._engine, self._node_writer, self._scheduler
        metrics, faults = self._metrics, self._node_faults
        if engine is None or writer is None or scheduler is None or metrics is None \
                or faults is None:
            raise AssertionError("_build wires every part")
        self._apply_node(settings)
        web_server = await self._listen(api)
        leadership = Leadership(
            connect=store.dedicated,
            seat=Seat(cluster.node, cluster.location, advertised(settings, web_server.port),
                      __version__),
            lease=cluster.lease.total_seconds(), clock=clock,
            on_elected=self._terms.put_nowait,
            on_deposed=lambda _reason: self._terms.put_nowait(None))
        self._leadership = leadership
        loop = asyncio.get_running_loop()
        signals = self._install_signals(loop)
        engine.start()

        def supervised(name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
            return asyncio.create_task(supervise(name, run, faults=faults, metrics=metrics,
                                                 clock=clock), name=name)

        seat = asyncio.create_task(self._hold_seat(leadership), name="leadership")
        tasks = [supervised("writer", writer.run),
                 supervised("scheduler", scheduler.run),
                 supervised("loop_lag", looplag.run),
                 supervised("terms", lambda: self._run_terms(store, engine, faults)),
                 supervised("windows", lambda: self._follow_windows(store, engine)),
                 supervised("cluster_status", lambda: self._watch_cluster(store))]
        self._ready = True
        log_config_warnings(settings)
        log.info("daemon_started", listen=f"{server.host}:{web_server.port}",
                 node=cluster.node, location=cluster.location,
                 targets=len(self._mine(settings)))
        systemd.notify(f"READY=1\nSTATUS={self.summary()}")
        watchdog = start_watchdog(supervised, scheduler, clock, self.summary)
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({stopper, seat}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._ready = False
            log.info("daemon_stopping")
            await announce_stopping(watchdog)
            for sig in signals:
                loop.remove_signal_handler(sig)
            stopper.cancel()
            await self._end_term(grace=DRAIN_GRACE)
            await leadership.resign()
            await _cancel(seat)
            for task in reversed(tasks[1:]):
                await _cancel(task)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(writer.flush(), timeout=5)
            await _cancel(tasks[0])
            engine.close()
            await web_server.stop()
        log.info("daemon_stopped")

    async def _build(self, store: PostgresStore,
                     session: aiohttp.ClientSession) -> tuple[Api, LoopLag]:
        """The node's parts: its engine (no desk), writer, scheduler and API."""
        settings, clock, cluster = self.settings, self.clock, self.cluster
        ctx = ProbeContext(clock=clock, session=session)
        metrics = metrics_for(settings, self.registry, ctx)
        self._metrics = metrics
        state = await store.load(recent=OBSERVATIONS_IN_MAIL)
        self._installation = state.installation
        faults = Faults(metrics, clock)
        self._node_faults = faults
        writer = Writer(store, clock=clock, faults=faults, metrics=metrics, linger=LINGER)
        self._node_writer = writer
        topology = build_topology(settings, today=clock.now().date())
        engine = Engine(topology=topology, state=state, writer=writer, desk=None,
                        timers=Timers(clock), clock=clock, metrics=metrics,
                        location=cluster.location)
        self._engine = engine
        recorder = SampleRecorder(metrics, listeners=[engine, *self.listeners])

        async def probe(target: Target, rule: Rule) -> Sample:
            return await run_probe(target, ctx, timeout=rule.timeout)

        looplag = LoopLag(clock, metrics)
        self._scheduler = Scheduler(clock=clock, probe=probe, recorder=recorder,
                                    metrics=metrics, max_in_flight=settings.engine.max_in_flight,
                                    faults=faults, stalls=looplag)
        server = settings.server
        self._history = History(store, lambda: engine.topology)
        page = page_of(settings, engine=engine, store=store, clock=clock,
                       history=self._history, term=lambda: self.term)
        self._page_routes = [] if page is None else at_the_leader(
            page, leading=lambda: self.term is not None,
            forward=lambda request: self._forward(session, request, page=True))
        self._page_source = page.source if page is not None else None
        api = Api(engine=engine, leading=lambda: self.term.leading() if self.term else None,
                  store=store, last=recorder.last, clock=clock,
                  token=server.token.get_secret_value() if server.token else None,
                  read_token=(server.read_token.get_secret_value() if server.read_token
                              else None),
                  forward=lambda request: self._forward(session, request),
                  cluster=self._status, locations=self._locations,
                  location_results=lambda name: self._location_results(store, name),
                  history=self._history, title=server.status_page.title)
        return api, looplag

    async def _listen(self, api: Api) -> WebServer:
        server = self.settings.server
        web_server = WebServer(build_app(registry=self.registry, readiness=self.readiness,
                                         faults=self.faults,
                                         routes=[*api.routes(), *self._page_routes]))
        try:
            await web_server.start(server.host, server.port)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(f"cannot listen on {server.listen}: {reason}") from None
        self.port = web_server.port
        return web_server

    async def _hold_seat(self, leadership: Leadership) -> None:
        """The election, for the daemon's life; a seat taken by another node ends it."""
        try:
            await leadership.run()
        except SeatTaken as exc:
            self._fatal = SeatRefused(str(exc))
            self._stop.set()

    def _mine(self, settings: Settings) -> list[Target]:
        """The targets this node's location probes."""
        location = self.cluster.location
        return [t for t in settings.targets if location in settings.locations_of(t)]

    def _apply_node(self, settings: Settings) -> None:
        assert self._engine is not None
        assert self._scheduler is not None
        assert self._metrics is not None
        topology = build_topology(settings, today=self.clock.now().date())
        self._engine.configure(topology)
        if isinstance(self._page_source, DaemonStatusSource):
            self._page_source.configure(settings.targets)
        mine = self._mine(settings)
        wanted = {t.name for t in mine}
        for name in self._scheduler.targets():
            if name not in wanted:
                self._metrics.remove_target(name)
                self._engine.forget(name)
        for target in settings.targets:
            self._metrics.add_target(labels_of(target))
        self._scheduler.apply([(t, settings.rule_for(t)) for t in mine])
        term = self.term
        if term is not None:
            term.desk.configure(topology)
            term.consensus.configure(topology)
            term.maintenance.configure(topology)
            term.composer.topology = topology

    async def reload(self) -> bool:
        def apply(new: Settings) -> None:
            term = self.term
            if term is not None:
                channels = channels_of(new.notify, installation=self._installation)
                term.drainer.reconfigure(channels, backoff_of(new.notify))
                term.composer.channels = channels
            self._apply_node(new)

        return await self._reload_with(apply)

    def _reload_metrics(self) -> Metrics | None:
        return self._metrics

    # -- the leader's term --------------------------------------------------------------------

    async def _run_terms(self, store: PostgresStore, engine: Engine, faults: Faults) -> None:
        """Begin a term on each election, end it on each deposition."""
        while True:
            epoch = await self._terms.get()
            await self._end_term(grace=0.0)
            if epoch is None:
                continue
            try:
                await self._begin_term(store, engine, epoch)
            except StoreError as exc:
                log.error("term_not_begun", epoch=epoch, reason=str(exc))  # noqa: TRY400
                faults.report("leader_term", str(exc))
                assert self._leadership is not None
                self._leadership.abdicate("could not load the leader's state")
            else:
                faults.clear("leader_term")

    async def _begin_term(self, store: PostgresStore, engine: Engine, epoch: int) -> None:
        settings, clock = self.settings, self.clock
        metrics, leadership = self._metrics, self._leadership
        assert metrics is not None
        assert leadership is not None
        state = await store.load(recent=OBSERVATIONS_IN_MAIL)
        fenced = store.fenced(epoch)
        term_faults = Faults(metrics, clock)
        self._term_faults = term_faults
        topology = build_topology(settings, today=clock.now().date())
        channels = channels_of(settings.notify, installation=state.installation)
        queue, writer, drainer = outbox_of(
            settings, state=state, store=fenced, clock=clock, metrics=metrics,
            faults=term_faults, channels=channels, authority=leadership.remaining,
            undurable=False)
        timers = Timers(clock)
        composer = Composer(topology, channels)
        consensus: Consensus
        desk = Desk(topology=topology, books=state.books, writer=writer, composer=composer,
                    timers=timers, clock=clock, metrics=metrics,
                    recent=store.recent_of,
                    seen=lambda name: consensus.seen(name))  # noqa: PLW0108 - bound later
        consensus = Consensus(topology=topology, desk=desk, writer=writer, timers=timers,
                              clock=clock, metrics=metrics, outages=state.consensus)
        maintenance = Maintenance(topology=topology, windows=state.windows, engine=engine,
                                  writer=writer, composer=composer, timers=timers,
                                  clock=clock, metrics=metrics)
        term = Term(epoch, writer, queue, drainer, composer, desk, maintenance, consensus,
                    timers)
        rows, term.seq = await store.views_since(0)
        await store.refresh_recent(_worth_quoting(rows, consensus.state))
        consensus.update(rows)
        maintenance.start()
        desk.start()
        consensus.start()
        self.term = term

        def supervised(name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
            return asyncio.create_task(supervise(name, run, faults=term_faults,
                                                 metrics=metrics, clock=clock), name=name)

        term.tasks = [supervised("leader_writer", writer.run),
                      supervised("drainer", drainer.run),
                      supervised("views", lambda: self._follow_views(store, term)),
                      supervised("housekeeping", lambda: self._keep_house(store, term)),
                      supervised("availability", lambda: measure_availability(
                          self._history, metrics, clock)),
                      supervised("monthly_report", lambda: mail_monthly_reports(
                          self._history, composer=composer, writer=writer, store=store,
                          clock=clock, enabled=lambda: self.settings.report.monthly))]
        metrics.cluster_leader.set(1)
        metrics.cluster_epoch.set(epoch)
        log.info("term_begun", node=self.cluster.node, epoch=epoch,
                 open_incidents=[b.open.id for b in state.books.values() if b.open])

    async def _end_term(self, *, grace: float) -> None:
        term, self.term = self.term, None
        if term is None:
            return
        if self._metrics is not None:
            self._metrics.cluster_leader.set(0)
            self._metrics.forget_locations()
        await term.drainer.stop(grace=grace)
        for task in reversed(term.tasks[1:]):
            await _cancel(task)
        with contextlib.suppress(TimeoutError):  # what it decided, written while it may
            await asyncio.wait_for(term.writer.flush(), timeout=1)
        await _cancel(term.tasks[0])
        term.drainer.clear_gauges()  # after the writer's last report of the queue
        term.timers.close()
        log.info("term_ended", node=self.cluster.node, epoch=term.epoch)

    async def _follow_views(self, store: PostgresStore, term: Term) -> None:
        clock = self.clock
        while True:
            rows, seq = await store.views_since(term.seq)
            if rows:
                await store.refresh_recent(_worth_quoting(rows, term.consensus.state))
                term.seq = seq
                term.consensus.update(rows)
            await clock.sleep_until(clock.monotonic() + VIEWS_POLL)

    async def _keep_house(self, store: PostgresStore, term: Term) -> None:
        clock = self.clock
        while True:
            term.writer.submit(pruning(self.settings.state, clock.now().timestamp()))
            gone = await store.forget_nodes(NODE_FORGOTTEN)
            if gone:
                log.warning("nodes_forgotten", nodes=gone, silent_for_s=NODE_FORGOTTEN)
            await clock.sleep_until(clock.monotonic() + HOUSEKEEPING)

    # -- every node ---------------------------------------------------------------------------

    async def _follow_windows(self, store: PostgresStore, engine: Engine) -> None:
        """Hold the targets that maintenance covers, from the windows the leader keeps."""
        clock = self.clock
        while True:
            if self.term is None:  # the leader's maintenance unit holds its own node
                windows = await store.windows()
                now = clock.now().timestamp()
                engine.hold({name: windows_rules.hold_until(windows, name, now)
                             for name in engine.topology.targets}, now)
            await clock.sleep_until(clock.monotonic() + WINDOWS_POLL)

    async def _watch_cluster(self, store: PostgresStore) -> None:
        clock, metrics, leadership = self.clock, self._metrics, self._leadership
        assert metrics is not None
        while True:
            try:
                status = await store.cluster_status(self.cluster.lease.total_seconds())
            except StoreError:
                metrics.cluster_database_up.set(0)
            else:
                metrics.cluster_database_up.set(1 if leadership is None
                                                or leadership.connected else 0)
                metrics.cluster_epoch.set(status["leader"]["epoch"] or 0)
                metrics.observe_nodes({n["node"]: n["heartbeat_age_s"] for n in status["nodes"]},
                                      status["lease"])
            if self._node_writer is not None:
                metrics.buffered_changes.set(self._node_writer.pending)
            await clock.sleep_until(clock.monotonic() + STATUS_POLL)

    async def _status(self) -> dict[str, Any]:
        assert self._store is not None
        status = await self._store.cluster_status(self.cluster.lease.total_seconds())
        status["this"] = {"node": self.cluster.node, "location": self.cluster.location,
                          "leading": self.term is not None}
        return status

    def _location_results(self, store: PostgresStore, name: str) -> dict[str, Any]:
        """The latest result of each location, as the leader last read them."""
        if self.term is None:
            return {}
        latest = {s.location: s for s in store.recent_of(name)}  # oldest first: last wins
        return {location: {"start": iso_utc(s.start), "result": s.result, "phase": s.phase,
                           "duration_s": round(s.duration, 4), "bad": s.bad}
                for location, s in sorted(latest.items())}

    def _locations(self, name: str) -> dict[str, str]:
        term = self.term
        if term is not None:
            return term.consensus.describe(name)
        return {}

    async def _forward(self, session: aiohttp.ClientSession, request: web.Request, *,
                       page: bool = False) -> web.Response:
        """A request for the leader, sent to a node that does not lead: to the leader, as it
        was sent, and its answer back with the headers that matter (type, caching, the
        page's content policy). ``page``: a visitor's status page or feed, answered within
        ``PAGE_FORWARD_TIMEOUT`` (tried once more at a leader elected meanwhile), with an
        error that names no address (the details go to the log)."""
        assert self._store is not None
        lease = self.cluster.lease.total_seconds()
        tried: str | None = None
        reason = "no leader answered"
        for _ in range(2 if page else 1):
            try:
                async with asyncio.timeout(PAGE_FORWARD_TIMEOUT if page else None):
                    address = await self._store.leader_address(lease)
            except (StoreError, TimeoutError) as exc:
                return self._unforwarded(page, "cannot find the leader: the state database "
                                               f"does not answer ({exc or 'timeout'})")
            if address is None or address == tried:
                return self._unforwarded(page, "no leader right now: the cluster is electing "
                                               "one; try again in a few seconds")
            tried = address
            try:
                return await self._send(session, request, address,
                                        PAGE_FORWARD_TIMEOUT if page else FORWARD_TIMEOUT)
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"the leader at {address} did not answer: {str(exc) or type(exc).__name__}"
        return self._unforwarded(page, reason)

    async def _send(self, session: aiohttp.ClientSession, request: web.Request, address: str,
                    timeout: float) -> web.Response:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in {"authorization", "content-type"}}
        headers[FORWARDED] = self.cluster.node
        body = await request.read()
        async with session.request(
                request.method, f"http://{address}{request.path_qs}", data=body,
                headers=headers, timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False) as answer:
            payload = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() in PASSED_BACK}
            return web.Response(body=payload, status=answer.status, headers=kept)

    def _unforwarded(self, page: bool, reason: str) -> web.Response:  # noqa: FBT001
        if not page:
            return error(503, reason)
        log.warning("page_not_forwarded", reason=reason)
        return web.Response(status=503, text="The status page is not available right now: "
                                             "try again in a few seconds.\n",
                            headers={"Retry-After": "5", "Cache-Control": "no-cache"})

def _worth_quoting(rows: list[tuple[str, str, Seen]],
                   state: Callable[[str], quorum.Consensus]) -> set[str]:
    """The targets whose latest samples may go into a mail: some location sees them down, or
    they are in outage. Samples are read for these only: a view changes with every run of
    every target, and reading all of them twice a second would be the leader's hot path."""
    return {target for target, _, seen in rows
            if seen.health is not Health.OK or state(target).outage_start is not None}


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

