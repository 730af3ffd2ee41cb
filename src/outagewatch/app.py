"""The composition root: builds every part from the settings (``build``) and runs them
(``Daemon.serve``): signals, configuration reloads, systemd. The only module that wires
the others together, and the only one that turns configuration into core values
(``topology.build_topology``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

import prometheus_client
import structlog
from prometheus_client import CollectorRegistry

from outagewatch import systemd
from outagewatch.api import Api, Leading
from outagewatch.clock import Clock, SystemClock
from outagewatch.config import Settings, config_warnings, load_settings
from outagewatch.core import availability
from outagewatch.core.report import monthly_due, report_message, report_thread
from outagewatch.engine import Composer, Desk, Engine, Maintenance, Timers, Writer
from outagewatch.engine.engine import OBSERVATIONS_IN_MAIL
from outagewatch.errors import ConfigError, ListenError
from outagewatch.faults import Faults, supervise
from outagewatch.history import History
from outagewatch.looplag import LoopLag
from outagewatch.metrics import (
    LoopCounts,
    Metrics,
    TargetLabels,
    build_metrics,
    duration_buckets,
    report_availability,
)
from outagewatch.model import ProbeType
from outagewatch.notify import Channel, Drainer, SmtpChannel
from outagewatch.notify.drainer import unlimited
from outagewatch.notify.queue import Queue
from outagewatch.probes import ProbeContext, new_http_session, phases_of, run_probe
from outagewatch.recorder import SampleRecorder
from outagewatch.scheduler import MAX_NAP, Scheduler
from outagewatch.statuspage.live import DaemonStatusSource, page_for
from outagewatch.store import Changes, StoreError
from outagewatch.store.sqlite import SqliteStore
from outagewatch.topology import build_topology
from outagewatch.web import WebServer, build_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
    from pathlib import Path

    from aiohttp.web import RouteDef

    from outagewatch.config import NotifyConfig, StateConfig, Target
    from outagewatch.model import Rule, Sample
    from outagewatch.scheduler import Recorder
    from outagewatch.statuspage.web import StatusPage
    from outagewatch.store import State, StateStore
    from outagewatch.topology import Topology

log = structlog.get_logger("outagewatch.app")

DRAIN_GRACE = 15.0  # seconds a stopping daemon gives the mail in progress
STATE_CHECK = 2.0  # seconds between looks at the state store's health
HOUSEKEEPING = 3600.0  # seconds between prunings of the state file
AVAILABILITY_EVERY = 300.0  # seconds between updates of the availability gauge
REPORT_CHECK = 3600.0  # seconds between looks whether a monthly report is due


def metrics_for(settings: Settings, registry: CollectorRegistry, ctx: ProbeContext) -> Metrics:
    rules = [settings.rule_for(t) for t in settings.targets]
    buckets = duration_buckets({r.threshold for r in rules}, max(r.timeout for r in rules))
    return build_metrics(
        registry,
        buckets=buckets,
        threads_running=lambda: ctx.threads.running,
        threads_stuck=lambda: ctx.threads.stuck,
        loops=lambda: loop_counts(ctx),
    )


def loop_counts(ctx: ProbeContext) -> list[LoopCounts]:
    """The mail-loop targets' late and lost counts and oldest pending mail, now."""
    now = ctx.clock.now().timestamp()
    return [LoopCounts(name, state.platform, state.late, state.lost,
                       state.oldest_pending_age(now), state.cleanup_failures)
            for name, state in ctx.loops.items()]


async def open_store(path: Path, *, threaded: bool = True) -> SqliteStore:
    """The state file, its directory created if missing (owner only), locked for us."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"state.path: cannot create {path.parent}: {exc.strerror}") from None
    return await SqliteStore.open(path, threaded=threaded)


def log_config_warnings(settings: Settings) -> None:
    """At start: what loads but will not do what an operator expects (the lines
    ``check-config`` prints as warnings)."""
    for warning in config_warnings(settings):
        log.warning("config_warning", warning=warning)


def labels_of(target: Target) -> TargetLabels:
    kind = ProbeType(target.type)
    return TargetLabels(target.name, kind, target.platform, phases_of(kind))


def channels_of(notify: NotifyConfig | None, *, installation: str) -> dict[str, Channel]:
    """The notification channels a configuration asks for (SMTP when ``notify`` is set)."""
    if notify is None:
        return {}
    return {SmtpChannel.name: SmtpChannel(notify, installation=installation)}


def backoff_of(notify: NotifyConfig | None) -> tuple[float, float]:
    if notify is None:
        return (5.0, 300.0)
    return (notify.retry_backoff.total_seconds(), notify.retry_max.total_seconds())


@dataclass(frozen=True, slots=True)
class Core:
    """The deciding and mailing parts, wired: what a running daemon and the engine's tests
    share."""

    installation: str
    faults: Faults
    queue: Queue
    writer: Writer
    drainer: Drainer
    composer: Composer
    engine: Engine
    maintenance: Maintenance


def wire(settings: Settings, *, state: State, store: StateStore, clock: Clock,
         metrics: Metrics) -> Core:
    """The engine, maintenance, writer, outbox queue and drainer on ``store``, from
    ``state`` as loaded."""
    topology = build_topology(settings, today=clock.now().date())
    channels = channels_of(settings.notify, installation=state.installation)
    faults = Faults(metrics, clock)
    queue, writer, drainer = outbox_of(settings, state=state, store=store, clock=clock,
                                       metrics=metrics, faults=faults, channels=channels)
    timers = Timers(clock)
    composer = Composer(topology, channels)
    desk = Desk(topology=topology, books=state.books, writer=writer, composer=composer,
                timers=timers, clock=clock, metrics=metrics,
                recent=lambda name: engine.recent(name))  # noqa: PLW0108 - bound later
    engine = Engine(topology=topology, state=state, writer=writer, desk=desk,
                    timers=timers, clock=clock, metrics=metrics)
    maintenance = Maintenance(topology=topology, windows=state.windows, engine=engine,
                              writer=writer, composer=composer, timers=timers, clock=clock,
                              metrics=metrics)
    return Core(state.installation, faults, queue, writer, drainer, composer, engine,
                maintenance)


def outbox_of(settings: Settings, *, state: State, store: StateStore, clock: Clock,
              metrics: Metrics, faults: Faults, channels: Mapping[str, Channel],
              authority: Callable[[], float] | None = None,
              undurable: bool = True) -> tuple[Queue, Writer, Drainer]:
    """The outbox in memory, the writer that makes changes durable, and the drainer that
    sends what they wrote (``authority``, ``undurable``: see ``notify/drainer.py``)."""
    queue = Queue()
    queue.load(state.outbox)

    def submitted(changes: Changes) -> None:
        queue.add(changes.envelopes)
        if changes.envelopes and writer.failing is not None:
            drainer.poke()  # the store cannot take them: they go out anyway (one node)

    def written(changes: Changes) -> None:
        queue.written(changes.envelopes, changes.deliveries.values())
        if changes.envelopes or changes.deliveries:  # new letters; a record that held one
            drainer.poke()
        drainer.update_gauges()

    writer = Writer(store, clock=clock, faults=faults, metrics=metrics,
                    on_submitted=submitted, on_written=written)
    drainer = Drainer(queue=queue, writer=writer, channels=channels, clock=clock,
                      metrics=metrics, backoff=backoff_of(settings.notify),
                      authority=authority or unlimited, undurable=undurable)
    return queue, writer, drainer


@dataclass(frozen=True, slots=True)
class Runtime:
    """Every long-lived part of a running daemon, built and wired."""

    settings: Settings
    clock: Clock
    registry: CollectorRegistry
    metrics: Metrics
    ctx: ProbeContext
    store: SqliteStore
    core: Core
    recorder: SampleRecorder
    scheduler: Scheduler
    looplag: LoopLag
    api: Api
    history: History
    status_page: StatusPage | None = None  # server.status_page.enabled

    def routes(self) -> list[RouteDef]:
        """The API's routes and the status page's."""
        page = self.status_page.routes() if self.status_page is not None else []
        return [*self.api.routes(), *page]


@contextlib.asynccontextmanager
async def build(settings: Settings, *, clock: Clock, registry: CollectorRegistry,
                listeners: Sequence[Recorder] = ()) -> AsyncIterator[Runtime]:
    """Open the state and the HTTP session and wire every part; close them on the way out."""
    store = await open_store(settings.state.path)
    try:
        async with new_http_session() as session:
            ctx = ProbeContext(clock=clock, session=session)
            metrics = metrics_for(settings, registry, ctx)
            state = await store.load(recent=OBSERVATIONS_IN_MAIL)
            core = wire(settings, state=state, store=store, clock=clock, metrics=metrics)
            engine = core.engine
            recorder = SampleRecorder(metrics, listeners=[engine, *listeners])

            async def probe(target: Target, rule: Rule) -> Sample:
                return await run_probe(target, ctx, timeout=rule.timeout)

            looplag = LoopLag(clock, metrics)
            scheduler = Scheduler(clock=clock, probe=probe, recorder=recorder, metrics=metrics,
                                  max_in_flight=settings.engine.max_in_flight,
                                  faults=core.faults, stalls=looplag)
            server = settings.server
            assert engine.desk is not None  # one node: its own desk
            leading = Leading(core.maintenance, engine.desk, core.writer, core.drainer)
            history = History(store, lambda: engine.topology)
            api = Api(engine=engine, leading=lambda: leading,
                      store=store, last=recorder.last, clock=clock,
                      token=server.token.get_secret_value() if server.token else None,
                      read_token=server.read_token.get_secret_value() if server.read_token
                      else None, history=history, title=server.status_page.title)
            page = status_page_of(settings, core=core, store=store, clock=clock,
                                  recorder=recorder, history=history)
            try:
                yield Runtime(settings=settings, clock=clock, registry=registry,
                              metrics=metrics, ctx=ctx, store=store, core=core,
                              recorder=recorder, scheduler=scheduler, looplag=looplag,
                              api=api, history=history, status_page=page)
            finally:
                engine.close()
    finally:
        await store.close()


def status_page_of(settings: Settings, *, core: Core, store: StateStore, clock: Clock,
                   recorder: SampleRecorder, history: History) -> StatusPage | None:
    """The status page and feed on this node's engine, maintenance and store (issue 13)."""
    source = DaemonStatusSource(engine=core.engine, maintenance=core.maintenance, store=store,
                                clock=clock, targets=settings.targets, last=recorder.last,
                                history=history)
    return page_for(settings.server, source)


class Daemon:
    """``outagewatch run``: probes on schedule, serves metrics, reloads on SIGHUP."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        listeners: Sequence[Recorder] = (),
    ) -> None:
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.settings = settings
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.registry = registry or CollectorRegistry()
        self.listeners = tuple(listeners)
        self.runtime: Runtime | None = None
        self.port = 0
        self._stop = asyncio.Event()
        self._ready = False
        self._reloading: asyncio.Future[bool] | None = None

    def stop(self) -> None:
        self._stop.set()

    def readiness(self) -> str | None:
        runtime = self.runtime
        if not self._ready or runtime is None or not runtime.scheduler.running:
            return "starting or stopping"
        if self.clock.monotonic() - runtime.scheduler.heartbeat > 10 * MAX_NAP:
            return "scheduler heartbeat is stale"
        return runtime.core.faults.blocking()

    def faults(self) -> dict[str, str]:
        """Every fault of the daemon's own, blocking or not, for /readyz."""
        if self.runtime is None:
            return {}
        return {name: fault.cause for name, fault in self.runtime.core.faults.active().items()}

    async def run(self) -> None:
        async with build(self.settings, clock=self.clock, registry=self.registry,
                         listeners=self.listeners) as runtime:
            self.runtime = runtime
            try:
                await self.serve(runtime)
            finally:
                self.runtime = None

    async def serve(self, runtime: Runtime) -> None:
        """Start the parts, run until stopped, stop them in order."""
        settings, clock = runtime.settings, runtime.clock
        self._apply(runtime, settings)
        web = WebServer(build_app(registry=runtime.registry, readiness=self.readiness,
                                  faults=self.faults, routes=runtime.routes()))
        try:
            await web.start(settings.server.host, settings.server.port)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(f"cannot listen on {settings.server.listen}: {reason}") from None
        self.port = web.port
        loop = asyncio.get_running_loop()
        signals = self._install_signals(loop)
        runtime.metrics.reloads.labels("success").inc()
        runtime.metrics.last_reload.set(clock.now().timestamp())
        runtime.metrics.cluster_leader.set(1)  # one node always leads, on its own state file
        runtime.metrics.cluster_database_up.set(1)
        # the holds of windows that started or ended while we were down come first, then
        # the deadlines that passed meanwhile are acted on
        runtime.core.maintenance.start()
        runtime.core.engine.start()
        def supervised(name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
            return asyncio.create_task(supervise(
                name, run, faults=runtime.core.faults, metrics=runtime.metrics, clock=clock),
                name=name)

        tasks = [supervised("writer", runtime.core.writer.run),
                 supervised("scheduler", runtime.scheduler.run),
                 supervised("loop_lag", runtime.looplag.run),
                 supervised("drainer", runtime.core.drainer.run),
                 supervised("state_watch", lambda: watch_state(runtime)),
                 supervised("housekeeping", lambda: keep_house(runtime)),
                 supervised("availability", lambda: measure_availability(
                     runtime.history, runtime.metrics, clock)),
                 supervised("monthly_report", lambda: mail_monthly_reports(
                     runtime.history, composer=runtime.core.composer,
                     writer=runtime.core.writer, store=runtime.store, clock=clock,
                     enabled=lambda: self.settings.report.monthly))]  # as reloaded
        self._ready = True
        log_config_warnings(settings)
        log.info("daemon_started", listen=f"{settings.server.host}:{web.port}",
                 targets=len(settings.targets))
        systemd.notify(f"READY=1\nSTATUS={self.summary()}")
        watchdog = start_watchdog(supervised, runtime.scheduler, clock, self.summary)
        try:
            await self._stop.wait()
        finally:
            self._ready = False
            log.info("daemon_stopping")
            await announce_stopping(watchdog)
            for sig in signals:
                loop.remove_signal_handler(sig)
            # a mail in the middle of its SMTP dialogue is finished, not cut in half
            await runtime.core.drainer.stop(grace=DRAIN_GRACE)
            for task in reversed(tasks[1:]):  # the writer last, after what feeds it
                await _cancel(task)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runtime.core.writer.flush(), timeout=5)
            await _cancel(tasks[0])
            await web.stop()
        log.info("daemon_stopped")

    def summary(self) -> str:
        """One line for systemctl status."""
        engine = self.runtime.core.engine if self.runtime is not None else None
        books = [engine.book(p) for p in self.settings.platforms] if engine else []
        open_incidents = [b.open.id for b in books if b.open is not None]
        return (f"{len(self.settings.targets)} targets; open incidents: "
                f"{', '.join(open_incidents) or 'none'}")

    def _reload_metrics(self) -> Metrics | None:
        return self.runtime.metrics if self.runtime is not None else None

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                             (signal.SIGHUP, self._reload_soon)):
            try:
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        return installed

    def _apply(self, runtime: Runtime, settings: Settings) -> None:
        topology: Topology = build_topology(settings, today=runtime.clock.now().date())
        runtime.core.engine.configure(topology)
        wanted = {t.name for t in settings.targets}
        for name in runtime.scheduler.targets():
            if name not in wanted:
                runtime.metrics.remove_target(name)
                runtime.ctx.forget(name)
                runtime.recorder.forget(name)
                runtime.core.engine.forget(name)
        runtime.core.maintenance.configure(topology)
        page = runtime.status_page
        if page is not None and isinstance(page.source, DaemonStatusSource):
            page.source.configure(settings.targets)
        for target in settings.targets:
            runtime.metrics.add_target(labels_of(target))
        runtime.scheduler.apply([(t, settings.rule_for(t)) for t in settings.targets])

    def _reload_soon(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.ensure_future(self.reload())

    async def reload(self) -> bool:
        """Re-read the configuration file; keep the running one if the new one is bad. The
        file is read and checked off the event loop: a huge one cannot stall the probes."""
        runtime = self.runtime
        if runtime is None:
            return False

        def apply(new: Settings) -> None:
            channels = channels_of(new.notify, installation=runtime.core.installation)
            runtime.core.drainer.reconfigure(channels, backoff_of(new.notify))
            runtime.core.composer.channels = channels
            self._apply(runtime, new)

        return await self._reload_with(apply)

    async def _reload_with(self, apply: Callable[[Settings], None]) -> bool:
        metrics = self._reload_metrics()
        if self.config_path is None or metrics is None:
            return False
        try:
            new = await asyncio.to_thread(load_settings, self.config_path)
        except ConfigError as exc:
            metrics.reloads.labels("failure").inc()
            log.error("config_reload_failed", problems=exc.problems,  # noqa: TRY400 - no trace
                      note="the previous configuration keeps running")
            return False
        old = self.settings
        for section in ("server", "engine", "state", "cluster"):
            if getattr(new, section) != getattr(old, section):
                log.warning("config_needs_restart", section=section,
                            note="this section takes effect at the next start")
        apply(new)
        self.settings = new
        metrics.reloads.labels("success").inc()
        metrics.last_reload.set(self.clock.now().timestamp())
        log.info("config_reloaded", targets=len(new.targets))
        return True


def start_watchdog(supervised: Callable[[str, Callable[[], Awaitable[None]]],
                                        asyncio.Task[None]],
                   scheduler: Scheduler, clock: Clock,
                   status: Callable[[], str]) -> asyncio.Task[None] | None:
    """systemd's watchdog, when the unit asks for one: pings while the scheduler's heartbeat
    is fresh."""
    period = systemd.watchdog_period()
    if period is None:
        return None
    return supervised("watchdog", lambda: systemd.watchdog(
        period, lambda: clock.monotonic() - scheduler.heartbeat, status=status))


async def announce_stopping(watchdog: asyncio.Task[None] | None) -> None:
    """STOPPING=1, after the watchdog's last ping: no ping may follow it."""
    if watchdog is not None:
        await _cancel(watchdog)
    systemd.notify("STOPPING=1")


async def watch_state(runtime: Runtime) -> None:
    """The store's own health as a fault: e.g. a state file deleted under the daemon."""
    clock = runtime.clock
    while True:
        problem = await runtime.store.health()
        if problem is None:
            runtime.core.faults.clear("state_file")
        else:
            runtime.core.faults.report("state_file", problem, blocking=True)
        await clock.sleep_until(clock.monotonic() + STATE_CHECK)


async def keep_house(runtime: Runtime) -> None:
    """Every hour: mails sent longer ago than ``state.keep_mails`` (if set) leave the state, and
    so do rollups and history past their retention."""
    clock = runtime.clock
    while True:
        runtime.core.writer.submit(pruning(runtime.settings.state, clock.now().timestamp()))
        await clock.sleep_until(clock.monotonic() + HOUSEKEEPING)


async def measure_availability(history: History, metrics: Metrics, clock: Clock) -> None:
    """Every few minutes: the running month's availability per platform and service, as
    ``outagewatch_availability_ratio`` (the same figures as the report's)."""
    while True:
        now = clock.now().timestamp()
        report = await history.report(functools.partial(availability.month_of, now),
                                      history.platforms(), now=now)
        report_availability(metrics.availability, report)
        await clock.sleep_until(clock.monotonic() + AVAILABILITY_EVERY)


async def mail_monthly_reports(history: History, *, composer: Composer, writer: Writer,
                               store: StateStore, clock: Clock,
                               enabled: Callable[[], bool]) -> None:
    """Every hour: with ``report.monthly``, the previous month's report of each platform goes
    to its info list, once, from the first business day of the month on (a month the monitor
    did not see at all goes to nobody)."""
    told: set[str] = set()
    while True:
        if enabled():
            now = clock.now().timestamp()
            topology = composer.topology
            for platform in history.platforms():
                label = monthly_due(now, topology.calendars[platform])
                thread = report_thread(platform, label) if label else None
                if thread is None or thread.key in told or await store.thread(thread.key):
                    continue
                assert label is not None
                report = await history.report(functools.partial(availability.parse_period,
                                                                label), [platform], now=now)
                if not report.platforms[0].figures.observed_s:
                    told.add(thread.key)
                    log.info("report_not_mailed", platform=platform, period=label,
                             reason="the monitor saw nothing of that month")
                    continue
                message = report_message(report, topology.info_recipients.get(platform, ()))
                envelopes = composer.message(message, now)
                if envelopes:
                    writer.submit(Changes(envelopes=envelopes))
                    await writer.flush()  # durable before it counts as mailed
                    log.info("report_mailed", platform=platform, period=label)
                told.add(thread.key)
        await clock.sleep_until(clock.monotonic() + REPORT_CHECK)


def pruning(state: StateConfig, now: float) -> Changes:
    """What the state's retention lets go at ``now`` (the hourly housekeeping's change)."""
    history = state.keep_history
    mails = state.keep_mails
    return Changes(prune_mails_before=None if mails is None else now - mails.total_seconds(),
                   prune_rollups_before=now - state.keep_rollups.total_seconds(),
                   prune_history_before=(None if history is None
                                         else now - history.total_seconds()))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
