"""Prometheus metrics, built on an injected registry; label sets of removed targets are dropped."""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from outagewatch import __version__
from outagewatch.model import Result

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from prometheus_client.metrics_core import Metric

    from outagewatch.core.report import Report
    from outagewatch.model import Phase, ProbeType, Sample

NAMESPACE = "outagewatch"
_BASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)
_AROUND_THRESHOLD = (0.5, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5)


def duration_buckets(thresholds: Iterable[float], max_timeout: float) -> tuple[float, ...]:
    """Coarse decades, fine steps around each threshold, and room past the largest timeout."""
    points = set(_BASE_BUCKETS)
    for threshold in thresholds:
        points.update(round(threshold * f, 6) for f in _AROUND_THRESHOLD)
    points.update((max_timeout, max_timeout * 1.5))
    return tuple(sorted(p for p in points if p <= max_timeout * 1.5))


@dataclass(frozen=True, slots=True)
class TargetLabels:
    """A target's label values, and the phases its probe type reports (``probes.phases_of``)."""

    target: str
    type: ProbeType
    platform: str
    phases: tuple[Phase, ...]

    def values(self) -> tuple[str, str, str]:
        return (self.target, self.type.value, self.platform)


_LABELS = ("target", "type", "platform")
SKIP_REASONS = ("previous_run_in_flight", "overload")  # why a due run did not start
NODE_STATES = ("live", "stale")  # a node's heartbeat within the lease, or not
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0)


@dataclass
class Metrics:
    registry: CollectorRegistry
    duration: Histogram
    phase: Gauge
    success: Gauge
    probes: Counter
    last_run: Gauge
    cert_expiry: Gauge
    overdue: Gauge
    skipped: Counter
    discounted: Counter
    schedule_lag: Histogram
    in_flight: Gauge
    waiting: Gauge
    capacity: Gauge
    loop_lag: Histogram
    threads_running: Gauge
    threads_stuck: Gauge
    targets: Gauge
    reloads: Counter
    last_reload: Gauge
    heartbeat: Gauge
    notifications: Counter
    outbox_pending: Gauge
    outbox_oldest_age: Gauge
    outbox_unrecorded: Gauge
    mails_failed: Gauge
    target_outage: Gauge
    incidents_open: Gauge
    availability: Gauge
    maintenance_active: Gauge
    fault: Gauge
    faults: Counter
    task_restarts: Counter
    state_pending: Gauge
    cluster_leader: Gauge
    cluster_epoch: Gauge
    cluster_nodes: Gauge
    cluster_heartbeat_age: Gauge
    cluster_database_up: Gauge
    locations_reporting: Gauge
    target_degraded: Gauge
    buffered_changes: Gauge
    _known: dict[str, TargetLabels] = field(default_factory=dict)
    _nodes: set[str] = field(default_factory=set)

    def add_target(self, labels: TargetLabels) -> None:
        """Create every series of a target up front, so dashboards see zeros, not gaps."""
        old = self._known.get(labels.target)
        if old is not None and old != labels:
            self.remove_target(old.target)
        self._known[labels.target] = labels
        values = labels.values()
        self.duration.labels(*values)
        self.success.labels(*values)
        self.last_run.labels(*values)
        self.overdue.labels(*values).set(0)
        self.target_outage.labels(*values)
        self.maintenance_active.labels(*values)
        for reason in SKIP_REASONS:
            self.skipped.labels(*values, reason)
        self.discounted.labels(*values)
        for phase in labels.phases:
            self.phase.labels(*values, phase.value)
        for result in Result:
            self.probes.labels(*values, result.value)
        self.targets.set(len(self._known))

    def remove_target(self, name: str) -> None:
        labels = self._known.pop(name, None)
        if labels is None:
            return
        values = labels.values()
        for metric in (self.duration, self.success, self.last_run, self.overdue,
                       self.discounted, self.cert_expiry, self.target_outage,
                       self.maintenance_active, self.locations_reporting,
                       self.target_degraded):
            _discard(metric, values)
        for reason in SKIP_REASONS:
            _discard(self.skipped, (*values, reason))
        for phase in labels.phases:
            _discard(self.phase, (*values, phase.value))
        for result in Result:
            _discard(self.probes, (*values, result.value))
        self.targets.set(len(self._known))

    def observe(self, sample: Sample) -> None:
        labels = self._known.get(sample.target)
        if labels is None:  # finished after its target was removed by a reload
            return
        values = labels.values()
        self.duration.labels(*values).observe(sample.duration)
        self.success.labels(*values).set(1 if sample.ok else 0)
        self.probes.labels(*values, sample.result.value).inc()
        self.last_run.labels(*values).set(sample.started_at.timestamp())
        self.overdue.labels(*values).set(0)
        for phase in labels.phases:
            self.phase.labels(*values, phase.value).set(sample.phases.get(phase, 0.0))
        if sample.cert_expiry is not None:
            self.cert_expiry.labels(*values).set(sample.cert_expiry)

    def mark_overdue(self, target: str) -> None:
        """A run still in flight past the threshold is BAD now (DESIGN 4.2)."""
        labels = self._known.get(target)
        if labels is not None:
            self.overdue.labels(*labels.values()).set(1)
            self.success.labels(*labels.values()).set(0)

    def report_locations(self, target: str, reporting: int, quorum: int) -> None:
        """The leader's count of a target's locations that are not blind, and whether that
        is short of the quorum the target needs."""
        labels = self._known.get(target)
        if labels is not None:
            self.locations_reporting.labels(*labels.values()).set(reporting)
            self.target_degraded.labels(*labels.values()).set(1 if reporting < quorum else 0)

    def forget_locations(self) -> None:
        """Drop every target's location series: this node no longer leads, and only the
        leader exports them."""
        for labels in self._known.values():
            _discard(self.locations_reporting, labels.values())
            _discard(self.target_degraded, labels.values())

    def observe_nodes(self, ages: Mapping[str, float], lease: float) -> None:
        """The cluster's nodes and the seconds since each one's heartbeat (by the database's
        clock); a node no longer listed loses its series."""
        live = sum(1 for age in ages.values() if age <= lease)
        self.cluster_nodes.labels("live").set(live)
        self.cluster_nodes.labels("stale").set(len(ages) - live)
        for node in self._nodes - ages.keys():
            _discard(self.cluster_heartbeat_age, (node,))
        self._nodes = set(ages)
        for node, age in ages.items():
            self.cluster_heartbeat_age.labels(node).set(age)


def _discard(metric: Gauge | Counter | Histogram, values: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*values)


@dataclass(frozen=True, slots=True)
class LoopCounts:
    """A mail-loop target's own numbers, read at each scrape."""

    target: str
    platform: str
    late: int
    lost: int
    oldest_pending_age: float
    cleanup_failures: int = 0


class _LoopCollector(Collector):
    """Late and lost mails and the age of the oldest pending one, per mail-loop target."""

    def __init__(self, read: Callable[[], Iterable[LoopCounts]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        ns = NAMESPACE
        late = CounterMetricFamily(
            f"{ns}_mailloop_late", "Loop mails seen after their run had given up on them.",
            labels=_LABELS)
        lost = CounterMetricFamily(
            f"{ns}_mailloop_lost", "Loop runs whose mail was not seen before the deadline.",
            labels=_LABELS)
        oldest = GaugeMetricFamily(
            f"{ns}_mailloop_oldest_pending_age_seconds",
            "Age of the oldest loop mail submitted and not seen yet (0: none).", labels=_LABELS)
        untidy = CounterMetricFamily(
            f"{ns}_mailloop_cleanup_failures",
            "Loop runs whose cleanup (deleting probe mails, LOGOUT) failed after their verdict.",
            labels=_LABELS)
        for counts in self._read():
            values = [counts.target, "mailloop", counts.platform]
            late.add_metric(values, counts.late)
            lost.add_metric(values, counts.lost)
            oldest.add_metric(values, counts.oldest_pending_age)
            untidy.add_metric(values, counts.cleanup_failures)
        yield from (late, lost, oldest, untidy)

    def describe(self) -> Iterator[Metric]:
        return iter(())


def build_metrics(
    registry: CollectorRegistry,
    *,
    buckets: tuple[float, ...],
    threads_running: Callable[[], float] | None = None,
    threads_stuck: Callable[[], float] | None = None,
    loops: Callable[[], Iterable[LoopCounts]] | None = None,
) -> Metrics:
    ns = NAMESPACE
    if loops is not None:
        registry.register(_LoopCollector(loops))
    info = Gauge(f"{ns}_build_info", "Build information (always 1).",
                 ("version", "python"), registry=registry)
    info.labels(__version__, platform.python_version()).set(1)
    running = Gauge(f"{ns}_probe_threads_running", "POP3 worker threads running now.",
                    registry=registry)
    stuck = Gauge(
        f"{ns}_probe_threads_stuck",
        "POP3 worker threads still running after their probe's deadline.",
        registry=registry,
    )
    nodes = Gauge(f"{ns}_cluster_nodes",
                  "The cluster's nodes by whether their heartbeat is within the lease (live) "
                  "or not (stale), by the database's clock.", ("state",), registry=registry)
    for state in NODE_STATES:
        nodes.labels(state)
    if threads_running is not None:
        running.set_function(threads_running)
    if threads_stuck is not None:
        stuck.set_function(threads_stuck)
    return Metrics(
        registry=registry,
        duration=Histogram(f"{ns}_probe_duration_seconds",
                           "Duration of probe runs (failed runs included).", _LABELS,
                           buckets=buckets, registry=registry),
        phase=Gauge(f"{ns}_probe_phase_duration_seconds",
                    "Duration of each phase in the last run (0 if not reached).",
                    (*_LABELS, "phase"), registry=registry),
        success=Gauge(f"{ns}_probe_success",
                      "1 if the last run succeeded; 0 if it failed or is past the threshold.",
                      _LABELS, registry=registry),
        probes=Counter(f"{ns}_probes", "Probe runs by result (ok or error class).",
                       (*_LABELS, "result"), registry=registry),
        last_run=Gauge(f"{ns}_probe_last_run_timestamp_seconds",
                       "Start time of the last finished run.", _LABELS, registry=registry),
        cert_expiry=Gauge(f"{ns}_tls_cert_expiry_timestamp_seconds",
                          "notAfter of the peer certificate seen by the last run.", _LABELS,
                          registry=registry),
        overdue=Gauge(f"{ns}_probe_overdue",
                      "1 while a run is in flight past the threshold (already BAD).", _LABELS,
                      registry=registry),
        skipped=Counter(f"{ns}_probe_runs_skipped",
                        "Due runs that did not start: the target's previous run was still "
                        "going (previous_run_in_flight), or the daemon could not keep up "
                        "(overload: the last run still waiting for probe capacity, or still "
                        "going because it started late, or the loop an interval behind).",
                        (*_LABELS, "reason"), registry=registry),
        discounted=Counter(f"{ns}_probe_runs_discounted",
                           "Runs that came out BAD only because the daemon itself stalled "
                           "during them: counted neither BAD nor GOOD (see "
                           "probe_run_discounted in the logs).", _LABELS, registry=registry),
        schedule_lag=Histogram(f"{ns}_schedule_lag_seconds",
                               "Actual start of a run minus its planned start.", ("platform",),
                               buckets=_LAG_BUCKETS, registry=registry),
        in_flight=Gauge(f"{ns}_probes_in_flight", "Probe runs in flight now.", ("platform",),
                        registry=registry),
        waiting=Gauge(f"{ns}_probe_runs_waiting",
                      "Due runs waiting for probe capacity (the daemon is overloaded).",
                      ("platform",), registry=registry),
        capacity=Gauge(f"{ns}_probe_capacity",
                       "Probe runs that may be in flight at once, all platforms (from the "
                       "open-file limit or engine.max_in_flight).", registry=registry),
        loop_lag=Histogram(f"{ns}_event_loop_lag_seconds",
                           "How late the event loop ran a timer: the daemon's own stalls, "
                           "which are never charged to a probe.", buckets=_LAG_BUCKETS,
                           registry=registry),
        threads_running=running,
        threads_stuck=stuck,
        targets=Gauge(f"{ns}_targets", "Configured targets.", registry=registry),
        reloads=Counter(f"{ns}_config_reloads", "Configuration reloads by result.", ("result",),
                        registry=registry),
        last_reload=Gauge(f"{ns}_config_last_reload_success_timestamp_seconds",
                          "Time of the last successful configuration load.", registry=registry),
        heartbeat=Gauge(f"{ns}_scheduler_heartbeat_timestamp_seconds",
                        "Last time the scheduler loop went round.", registry=registry),
        notifications=Counter(f"{ns}_notifications", "Mail delivery attempts by kind and "
                              "result (sent, retry, failed, superseded).", ("kind", "result"),
                              registry=registry),
        outbox_pending=Gauge(f"{ns}_outbox_pending", "Mails waiting in the outbox.",
                             registry=registry),
        outbox_oldest_age=Gauge(f"{ns}_outbox_oldest_pending_age_seconds",
                                "Age of the oldest mail waiting in the outbox (0 if none).",
                                registry=registry),
        outbox_unrecorded=Gauge(f"{ns}_outbox_unrecorded",
                                "Mails whose state (queued, sent, failed) is not yet written "
                                "to the state store.", registry=registry),
        mails_failed=Gauge(f"{ns}_mails_failed", "Mails refused for good and not sent, now, "
                           "by kind (fix the cause, then 'outagewatch mail resend').",
                           ("kind",), registry=registry),
        target_outage=Gauge(f"{ns}_target_outage",
                            "1 while the target is in OUTAGE by the agreement's definition.",
                            _LABELS, registry=registry),
        incidents_open=Gauge(f"{ns}_incidents_open", "Open incidents by platform and severity.",
                             ("platform", "severity"), registry=registry),
        availability=Gauge(f"{ns}_availability_ratio",
                           "Time-weighted availability of the running calendar month in the "
                           "platform's zone, 1 - outage / (elapsed - maintenance - blind), "
                           "as the report computes it; service=\"\" is the platform's.",
                           ("platform", "service", "period"), registry=registry),
        maintenance_active=Gauge(f"{ns}_maintenance_active",
                                 "1 while a maintenance window covers the target.", _LABELS,
                                 registry=registry),
        fault=Gauge(f"{ns}_fault", "1 while the daemon's own machinery has this fault "
                    "(see fault_raised in the logs).", ("fault",), registry=registry),
        faults=Counter(f"{ns}_faults", "Faults of the daemon's own machinery, by kind, as "
                       "they started.", ("fault",), registry=registry),
        task_restarts=Counter(f"{ns}_task_restarts", "Long-running tasks restarted after "
                              "they crashed (see task_crashed in the logs).", ("task",),
                              registry=registry),
        state_pending=Gauge(f"{ns}_state_pending_writes",
                            "Changes decided but not yet written to the state store.",
                            registry=registry),
        # cluster_*: registered in every mode, 0 until the daemon sets them
        cluster_leader=Gauge(f"{ns}_cluster_leader",
                             "1 while this node leads (acts with a valid lease), else 0; a "
                             "single node always leads.", registry=registry),
        cluster_epoch=Gauge(f"{ns}_cluster_epoch",
                            "The leadership epoch this node last saw (its own while it "
                            "leads; 0 for a single node).", registry=registry),
        cluster_nodes=nodes,
        cluster_heartbeat_age=Gauge(f"{ns}_cluster_node_heartbeat_age_seconds",
                                    "Seconds since each node's last heartbeat, by the "
                                    "database's clock.", ("node",), registry=registry),
        cluster_database_up=Gauge(f"{ns}_cluster_database_up",
                                  "1 while this node's connection to the state database "
                                  "works; a single node, whose state is a file, exports 1.",
                                  registry=registry),
        locations_reporting=Gauge(f"{ns}_cluster_locations_reporting",
                                  "Locations not blind for the target (their latest run is "
                                  "at most 2 x interval + timeout old); exported by the "
                                  "leader only.", _LABELS, registry=registry),
        target_degraded=Gauge(f"{ns}_cluster_target_degraded",
                              "1 while fewer than quorum locations report for the target: "
                              "its verdicts need every reporting location; exported by the "
                              "leader only.", _LABELS, registry=registry),
        buffered_changes=Gauge(f"{ns}_cluster_buffered_changes",
                               "Changes held in memory because the state database cannot "
                               "be written.", registry=registry),
    )


def report_availability(gauge: Gauge, report: Report) -> None:
    """The running month's figures as the availability gauge; no figure (nothing observed
    yet), no series."""
    gauge.clear()
    for block in report.platforms:
        rows = [("", block.figures.availability),
                *((s.name, s.figures.availability) for s in block.services)]
        for service, value in rows:
            if value is not None:
                gauge.labels(block.name, service, "month").set(value)
