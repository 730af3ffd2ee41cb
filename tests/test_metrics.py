from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest

from outagewatch.metrics import TargetLabels, build_metrics, duration_buckets
from outagewatch.model import Phase, ProbeType, Result, Sample
from outagewatch.probes import phases_of

LABELS = {"target": "imap-eu", "type": "imap", "platform": "eu"}


def build():
    registry = CollectorRegistry()
    return registry, build_metrics(registry, buckets=duration_buckets([30.0], 35.0))


def labels(target, kind, platform):
    return TargetLabels(target, kind, platform, phases_of(kind))


def sample(**kw):
    base = {"target": "imap-eu", "started_at": datetime(2026, 1, 1, tzinfo=UTC),
            "duration": 0.25, "result": Result.OK,
            "phases": {Phase.GREETING: 0.1, Phase.LOGIN: 0.15}}
    return Sample(**{**base, **kw})


class TestBuckets:
    def test_fine_around_threshold_and_past_timeout(self):
        """Buckets resolve 28.5 s vs 31.5 s, and the largest exceeds the largest timeout."""
        buckets = duration_buckets([30.0], 35.0)
        assert {27.0, 28.5, 30.0, 31.5, 33.0} <= set(buckets)
        assert max(buckets) > 35.0
        assert list(buckets) == sorted(buckets)


class TestMetrics:
    def test_series_exist_before_the_first_run(self):
        """Every phase of a target's protocol is exported from the start (0, not absent)."""
        registry, metrics = build()
        metrics.add_target(labels("imap-eu", ProbeType.IMAP, "eu"))
        for phase in ("greeting", "starttls", "login", "select", "logout"):
            assert 0.0 == registry.get_sample_value(
                "outagewatch_probe_phase_duration_seconds", {**LABELS, "phase": phase})
        assert 0.0 == registry.get_sample_value("outagewatch_probes_total",
                                                {**LABELS, "result": "timeout"})

    def test_only_the_phases_given(self):
        """A target exports the phases its labels carry and no others."""
        registry, metrics = build()
        metrics.add_target(labels("imap-eu", ProbeType.IMAP, "eu"))
        exported = {s.labels["phase"] for m in registry.collect() for s in m.samples
                    if m.name == "outagewatch_probe_phase_duration_seconds"}
        assert {p.value for p in phases_of(ProbeType.IMAP)} == exported

    def test_observe(self):
        registry, metrics = build()
        metrics.add_target(labels("imap-eu", ProbeType.IMAP, "eu"))
        metrics.observe(sample(cert_expiry=1_900_000_000.0))
        metrics.observe(sample(result=Result.TIMEOUT, phase=Phase.LOGIN, duration=35.0))
        get = registry.get_sample_value
        assert 0 == get("outagewatch_probe_success", LABELS)
        assert 1 == get("outagewatch_probes_total", {**LABELS, "result": "ok"})
        assert 1 == get("outagewatch_probes_total", {**LABELS, "result": "timeout"})
        assert 2 == get("outagewatch_probe_duration_seconds_count", LABELS)
        assert 1 == get("outagewatch_probe_duration_seconds_bucket", {**LABELS, "le": "30.0"})
        assert 1_900_000_000 == get("outagewatch_tls_cert_expiry_timestamp_seconds", LABELS)
        assert datetime(2026, 1, 1, tzinfo=UTC).timestamp() == get(
            "outagewatch_probe_last_run_timestamp_seconds", LABELS)

    def test_removed_target_series_disappear(self):
        registry, metrics = build()
        metrics.add_target(labels("imap-eu", ProbeType.IMAP, "eu"))
        metrics.add_target(labels("web", ProbeType.HTTP, "eu"))
        metrics.observe(sample(cert_expiry=1.0))
        metrics.remove_target("imap-eu")
        text = generate_latest(registry).decode()
        assert 'target="imap-eu"' not in text
        assert 'target="web"' in text
        assert 1 == registry.get_sample_value("outagewatch_targets")
        metrics.observe(sample())  # a late sample of a removed target is ignored
        assert 'target="imap-eu"' not in generate_latest(registry).decode()

    def test_relabel_moves_series(self):
        """A target moved to another platform keeps no series under the old label."""
        registry, metrics = build()
        metrics.add_target(labels("imap-eu", ProbeType.IMAP, "eu"))
        metrics.add_target(labels("imap-eu", ProbeType.IMAP, "us"))
        text = generate_latest(registry).decode()
        assert 'platform="eu"' not in text
        assert 'platform="us"' in text


class TestOverloadMetrics:
    """Issue 10, items 3 and 15: the daemon's own blindness has series of its own."""

    def test_skips_have_a_reason_and_discounts_a_series(self):
        """Every target exports its skipped runs by reason and its discounted runs from the
        start (0, not absent), and loses them when removed."""
        registry, metrics = build()
        metrics.add_target(labels("imap-eu", ProbeType.IMAP, "eu"))
        get = registry.get_sample_value
        for reason in ("previous_run_in_flight", "overload"):
            assert 0.0 == get("outagewatch_probe_runs_skipped_total", {**LABELS, "reason": reason})
        assert 0.0 == get("outagewatch_probe_runs_discounted_total", LABELS)
        metrics.remove_target("imap-eu")
        text = generate_latest(registry).decode()
        assert 'target="imap-eu"' not in text

    def test_lag_in_flight_and_waiting_per_platform(self):
        registry, metrics = build()
        metrics.schedule_lag.labels("eu").observe(2.0)
        metrics.in_flight.labels("us").inc()
        metrics.waiting.labels("eu").set(3)
        metrics.capacity.set(9000)
        metrics.loop_lag.observe(0.3)
        get = registry.get_sample_value
        assert 1 == get("outagewatch_schedule_lag_seconds_bucket", {"platform": "eu", "le": "2.5"})
        assert 0 == get("outagewatch_schedule_lag_seconds_bucket", {"platform": "eu", "le": "1.0"})
        assert 1 == get("outagewatch_probes_in_flight", {"platform": "us"})
        assert 3 == get("outagewatch_probe_runs_waiting", {"platform": "eu"})
        assert 9000 == get("outagewatch_probe_capacity")
        assert 1 == get("outagewatch_event_loop_lag_seconds_bucket", {"le": "0.5"})


class TestClusterMetrics:
    """Cluster mode: leadership, nodes, the database and each target's locations. Registered
    in every mode, so that a single node exports them too."""

    def test_registered_from_the_start(self):
        registry, _ = build()
        families = {m.name: m for m in registry.collect()}
        for name in ("outagewatch_cluster_leader", "outagewatch_cluster_epoch",
                     "outagewatch_cluster_nodes", "outagewatch_cluster_node_heartbeat_age_seconds",
                     "outagewatch_cluster_database_up", "outagewatch_cluster_locations_reporting",
                     "outagewatch_cluster_target_degraded",
                     "outagewatch_cluster_buffered_changes"):
            assert "gauge" == families[name].type, name
        get = registry.get_sample_value
        for name in ("outagewatch_cluster_leader", "outagewatch_cluster_epoch",
                     "outagewatch_cluster_database_up", "outagewatch_cluster_buffered_changes"):
            assert 0.0 == get(name), name  # no labels, 0 until the daemon sets it
        for state in ("live", "stale"):
            assert 0.0 == get("outagewatch_cluster_nodes", {"state": state})
        assert [] == families["outagewatch_cluster_locations_reporting"].samples

    def test_label_sets(self):
        registry, metrics = build()
        metrics.add_target(labels("imap-eu", ProbeType.IMAP, "eu"))
        metrics.report_locations("imap-eu", 1, 2)
        metrics.observe_nodes({"node-a": 3.0}, 15.0)
        found = {m.name: {tuple(sorted(s.labels)) for s in m.samples}
                 for m in registry.collect() if m.name.startswith("outagewatch_cluster_")}
        target = ("platform", "target", "type")
        assert {
            "outagewatch_cluster_leader": {()},
            "outagewatch_cluster_epoch": {()},
            "outagewatch_cluster_nodes": {("state",)},
            "outagewatch_cluster_node_heartbeat_age_seconds": {("node",)},
            "outagewatch_cluster_database_up": {()},
            "outagewatch_cluster_locations_reporting": {target},
            "outagewatch_cluster_target_degraded": {target},
            "outagewatch_cluster_buffered_changes": {()},
        } == found

    def test_locations_and_degraded(self):
        registry, metrics = build()
        metrics.add_target(labels("imap-eu", ProbeType.IMAP, "eu"))
        get = registry.get_sample_value
        metrics.report_locations("imap-eu", 1, 2)
        assert (1, 1) == (get("outagewatch_cluster_locations_reporting", LABELS),
                          get("outagewatch_cluster_target_degraded", LABELS))
        metrics.report_locations("imap-eu", 2, 2)
        assert (2, 0) == (get("outagewatch_cluster_locations_reporting", LABELS),
                          get("outagewatch_cluster_target_degraded", LABELS))
        metrics.report_locations("gone", 0, 2)  # not a known target: ignored
        assert 'target="gone"' not in generate_latest(registry).decode()
        metrics.forget_locations()  # no longer the leader
        assert get("outagewatch_cluster_locations_reporting", LABELS) is None
        assert get("outagewatch_cluster_target_degraded", LABELS) is None

    def test_removed_target_loses_its_cluster_series(self):
        registry, metrics = build()
        metrics.add_target(labels("imap-eu", ProbeType.IMAP, "eu"))
        metrics.add_target(labels("web", ProbeType.HTTP, "eu"))
        metrics.report_locations("imap-eu", 1, 2)
        metrics.report_locations("web", 3, 2)
        metrics.remove_target("imap-eu")
        text = generate_latest(registry).decode()
        assert 'target="imap-eu"' not in text
        web = {"target": "web", "type": "http", "platform": "eu"}
        assert 3 == registry.get_sample_value("outagewatch_cluster_locations_reporting", web)
        assert 0 == registry.get_sample_value("outagewatch_cluster_target_degraded", web)

    def test_nodes_live_stale_and_gone(self):
        registry, metrics = build()
        get = registry.get_sample_value
        metrics.observe_nodes({"node-a": 2.0, "node-b": 15.0, "node-c": 40.0}, 15.0)
        assert (2, 1) == (get("outagewatch_cluster_nodes", {"state": "live"}),
                          get("outagewatch_cluster_nodes", {"state": "stale"}))
        assert 40 == get("outagewatch_cluster_node_heartbeat_age_seconds", {"node": "node-c"})
        metrics.observe_nodes({"node-a": 1.0}, 15.0)
        assert (1, 0) == (get("outagewatch_cluster_nodes", {"state": "live"}),
                          get("outagewatch_cluster_nodes", {"state": "stale"}))
        assert 'node="node-c"' not in generate_latest(registry).decode()
        assert 1 == get("outagewatch_cluster_node_heartbeat_age_seconds", {"node": "node-a"})
