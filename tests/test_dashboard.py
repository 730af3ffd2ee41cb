"""The Grafana dashboard only uses metrics the daemon really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from outagewatch.metrics import LoopCounts, build_metrics

DASHBOARD = Path(__file__).parents[1] / "grafana" / "outagewatch.json"


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    build_metrics(registry, buckets=(1.0,),  # a daemon with one mail-loop target
                  loops=lambda: [LoopCounts("loop", "eu", 0, 0, 0.0)])
    names = set()
    for family in registry.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        names.update(family.name + s for s in suffixes.get(family.type, []))
    return names


def test_every_rule_metric_is_exported():
    rules = (Path(__file__).parents[1] / "deploy" / "prometheus" / "rules.yml").read_text()
    used = set(re.findall(r"outagewatch_[a-z_]+", rules))
    assert used
    assert set() == used - exported_names()


def test_every_dashboard_metric_is_exported():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    used = {m for e in exprs for m in re.findall(r"outagewatch_[a-z_]+", e)}
    assert used
    assert set() == used - exported_names()


def used_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    rules = (Path(__file__).parents[1] / "deploy" / "prometheus" / "rules.yml").read_text()
    return {m for e in [*exprs, rules] for m in re.findall(r"outagewatch_[a-z_]+", e)}


CLUSTER_METRICS = {
    "outagewatch_cluster_leader", "outagewatch_cluster_epoch", "outagewatch_cluster_nodes",
    "outagewatch_cluster_node_heartbeat_age_seconds", "outagewatch_cluster_database_up",
    "outagewatch_cluster_locations_reporting", "outagewatch_cluster_target_degraded",
    "outagewatch_cluster_buffered_changes",
}


def test_cluster_row_shows_every_cluster_metric():
    """The Cluster row's panels (those below it) use every cluster metric, and the metrics
    are registered in every mode, a single node included."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    row = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Cluster")
    exprs = [t["expr"] for p in panels[row + 1:] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"outagewatch_[a-z_]+", e)}
    assert CLUSTER_METRICS <= used
    assert CLUSTER_METRICS <= exported_names()


def test_panel_ids_unique_and_layout_without_overlap():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"], p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["id"], cells.get((x, y)))
                cells[(x, y)] = p["id"]


def test_every_dashboard_variable_used_is_defined():
    dashboard = json.loads(DASHBOARD.read_text())
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {v for e in exprs for v in re.findall(r"\$([a-z]+)", e)}
    assert set() == used - defined


def test_the_mail_loop_panel_shows_lost_late_and_pending():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    (panel,) = [p for p in panels if p["title"].startswith("Mail loops")]
    exprs = " ".join(t["expr"] for t in panel["targets"])
    assert {"outagewatch_mailloop_lost_total", "outagewatch_mailloop_late_total",
            "outagewatch_mailloop_oldest_pending_age_seconds"} == set(
        re.findall(r"outagewatch_mailloop_[a-z_]+", exprs))
