"""The Grafana dashboard only uses metrics the daemon really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from outagewatch.metrics import build_metrics

DASHBOARD = Path(__file__).parents[1] / "grafana" / "outagewatch.json"


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    build_metrics(registry, buckets=(1.0,))
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
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    used = {m for e in exprs for m in re.findall(r"outagewatch_[a-z_]+", e)}
    assert used
    assert set() == used - exported_names()


def used_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    rules = (Path(__file__).parents[1] / "deploy" / "prometheus" / "rules.yml").read_text()
    return {m for e in [*exprs, rules] for m in re.findall(r"outagewatch_[a-z_]+", e)}
