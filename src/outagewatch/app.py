"""The composition root: builds clock, registry, probes, scheduler and web server; handles
signals and configuration reloads. The only module that wires the others together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

import anyio
import prometheus_client
import structlog
from prometheus_client import CollectorRegistry

from outagewatch import systemd
from outagewatch.api import OperatorApi, incident_json
from outagewatch.clock import Clock, SystemClock
from outagewatch.config import Settings, load_settings
from outagewatch.errors import ConfigError, ListenError
from outagewatch.mailer import Mailer
from outagewatch.metrics import Metrics, TargetLabels, build_metrics, duration_buckets
from outagewatch.model import ProbeType, iso_utc, sample_json
from outagewatch.monitor import Monitor
from outagewatch.probes import ProbeContext, new_http_session, run_probe
from outagewatch.recorder import SampleRecorder
from outagewatch.scheduler import MAX_NAP, Scheduler
from outagewatch.store import Store, StoreError
from outagewatch.web import WebServer, build_app

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from outagewatch.config import Target
    from outagewatch.model import Rule, Sample
    from outagewatch.scheduler import Recorder

log = structlog.get_logger("outagewatch.app")


def metrics_for(settings: Settings, registry: CollectorRegistry, ctx: ProbeContext) -> Metrics:
    rules = [settings.rule_for(t) for t in settings.targets]
    buckets = duration_buckets({r.threshold for r in rules}, max(r.timeout for r in rules))
    return build_metrics(
        registry,
        buckets=buckets,
        threads_running=lambda: ctx.threads.running,
        threads_stuck=lambda: ctx.threads.stuck,
    )


def open_store(path: Path) -> Store:
    """The state file, its directory created if missing (owner only)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"state.path: cannot create {path.parent}: {exc.strerror}") from None
    return Store(path)


def labels_of(target: Target) -> TargetLabels:
    return TargetLabels(target.name, ProbeType(target.type), target.platform)


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
        self._stop = asyncio.Event()
        self._ready = False
        self.web: WebServer | None = None
        self.scheduler: Scheduler | None = None
        self.metrics: Metrics | None = None
        self.ctx: ProbeContext | None = None
        self.recorder: SampleRecorder | None = None
        self.monitor: Monitor | None = None
        self.mailer: Mailer | None = None
        self.store: Store | None = None

    def stop(self) -> None:
        self._stop.set()

    def readiness(self) -> str | None:
        scheduler = self.scheduler
        if not self._ready or scheduler is None or not scheduler.running:
            return "starting or stopping"
        if self.clock.monotonic() - scheduler.heartbeat > 10 * MAX_NAP:
            return "scheduler heartbeat is stale"
        return None

    async def run(self) -> None:
        settings = self.settings
        store = self.store = open_store(settings.state.path)
        try:
            await self._run(settings, store)
        finally:
            if self.monitor is not None:
                self.monitor.close()
            store.close()

    async def _run(self, settings: Settings, store: Store) -> None:
        async with new_http_session() as session:
            ctx = ProbeContext(
                clock=self.clock,
                session=session,
                pop3_limiter=anyio.CapacityLimiter(settings.engine.pop3_threads),
            )
            self.ctx = ctx
            metrics = self.metrics = metrics_for(settings, self.registry, ctx)
            mailer = self.mailer = (
                Mailer(store=store, notify=settings.notify, clock=self.clock, metrics=metrics,
                       backoff=(settings.notify.retry_backoff.total_seconds(),
                                settings.notify.retry_max.total_seconds()))
                if settings.notify is not None else None)
            monitor = self.monitor = Monitor(
                store=store, clock=self.clock, metrics=metrics, settings=settings,
                poke=mailer.poke if mailer is not None else lambda: None)
            recorder = self.recorder = SampleRecorder(
                metrics, listeners=[monitor, *self.listeners])

            async def probe(target: Target, rule: Rule) -> Sample:
                return await run_probe(target, ctx, timeout=rule.timeout)

            scheduler = self.scheduler = Scheduler(
                clock=self.clock, probe=probe, recorder=recorder, metrics=metrics,
                max_in_flight=settings.engine.max_in_flight,
            )
            self._apply(settings)
            token = settings.server.token.get_secret_value() if settings.server.token else None
            self.web = WebServer(build_app(registry=self.registry, readiness=self.readiness,
                                           status=self.status, incidents=self.incidents,
                                           routes=OperatorApi(monitor, token).routes()))
            try:
                await self.web.start(settings.server.host, settings.server.port)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise ListenError(f"cannot listen on {settings.server.listen}: {reason}") \
                    from None
            loop = asyncio.get_running_loop()
            signals = self._install_signals(loop)
            metrics.reloads.labels("success").inc()
            metrics.last_reload.set(self.clock.now().timestamp())
            monitor.start()
            task = asyncio.create_task(scheduler.run())
            mailing = asyncio.create_task(mailer.run()) if mailer is not None else None
            self._ready = True
            log.info("daemon_started", listen=f"{settings.server.host}:{self.web.port}",
                     targets=len(settings.targets))
            systemd.notify(f"READY=1\nSTATUS={self.summary()}")
            period = systemd.watchdog_period()
            dog = (asyncio.create_task(systemd.watchdog(
                period, lambda: self.clock.monotonic() - scheduler.heartbeat,
                status=self.summary)) if period is not None else None)
            try:
                await self._stop.wait()
            finally:
                self._ready = False
                log.info("daemon_stopping")
                systemd.notify("STOPPING=1")
                if dog is not None:
                    dog.cancel()
                for sig in signals:
                    loop.remove_signal_handler(sig)
                for running in (task, mailing):
                    if running is not None:
                        running.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await running
                await self.web.stop()
            log.info("daemon_stopped")

    def summary(self) -> str:
        """One line for systemctl status."""
        books = [self.monitor.book(p) for p in self.settings.platforms] if self.monitor else []
        open_incidents = [b.open.id for b in books if b.open is not None]
        return (f"{len(self.settings.targets)} targets; open incidents: "
                f"{', '.join(open_incidents) or 'none'}")

    def status(self) -> dict[str, Any]:
        """GET /api/v1/status: every target's state, last run and streak."""
        assert self.monitor is not None
        assert self.recorder is not None
        targets = []
        for target in self.settings.targets:
            verdict = self.monitor.verdict(target.name)
            sample = self.recorder.last.get(target.name)
            state = "unknown" if sample is None and verdict.last_start is None else (
                verdict.health.value)
            targets.append({
                "name": target.name, "type": target.type, "platform": target.platform,
                "state": state,
                "streak_start": iso_utc(verdict.streak_start),
                "outage_start": iso_utc(verdict.outage_start),
                "last_sample": None if sample is None else sample_json(sample),
            })
        return {"generated_at": self.clock.now().isoformat(), "targets": targets}

    def incidents(self) -> dict[str, Any]:
        """GET /api/v1/incidents: open and recent incidents, each with its mails."""
        assert self.store is not None
        items = [incident_json(i, self.store.mails(i.id)) for i in self.store.incidents()]
        return {"open": [i for i in items if i["resolved_at"] is None],
                "recent": [i for i in items if i["resolved_at"] is not None]}

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed: list[int] = []
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                             (signal.SIGHUP, self.reload)):
            try:
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        return installed

    def _apply(self, settings: Settings) -> None:
        assert self.scheduler is not None
        assert self.metrics is not None
        assert self.ctx is not None
        if self.monitor is not None:
            self.monitor.configure(settings)
            self.monitor.register_configured_windows()
        wanted = {t.name for t in settings.targets}
        for name in self.scheduler.targets():
            if name not in wanted:
                self.metrics.remove_target(name)
                self.ctx.forget(name)
                if self.recorder is not None:
                    self.recorder.forget(name)
                if self.monitor is not None:
                    self.monitor.forget(name)
        for target in settings.targets:
            self.metrics.add_target(labels_of(target))
        self.scheduler.apply([(t, settings.rule_for(t)) for t in settings.targets])

    def reload(self) -> bool:
        """Re-read the configuration file; keep the running one if the new one is bad."""
        if self.config_path is None or self.metrics is None:
            return False
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            self.metrics.reloads.labels("failure").inc()
            log.error("config_reload_failed", problems=exc.problems,  # noqa: TRY400 - no trace
                      note="the previous configuration keeps running")
            return False
        old = self.settings
        for section in ("server", "engine", "state"):
            if getattr(new, section) != getattr(old, section):
                log.warning("config_needs_restart", section=section,
                            note="this section takes effect at the next start")
        if (new.notify is None) != (old.notify is None):
            log.warning("config_needs_restart", section="notify",
                        note="adding or removing notify takes effect at the next start")
        elif new.notify is not None and self.mailer is not None:
            self.mailer.reconfigure(new.notify)
        self._apply(new)
        self.settings = new
        self.metrics.reloads.labels("success").inc()
        self.metrics.last_reload.set(self.clock.now().timestamp())
        log.info("config_reloaded", targets=len(new.targets))
        return True
