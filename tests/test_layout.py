"""The layout tells the architecture: these import rules are checked, not just written."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "outagewatch"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_model_and_clock_import_nothing_of_ours():
    for name in ("model.py", "clock.py", "errors.py"):
        assert not {m for m in imports(SRC / name) if m.startswith("outagewatch")}, name


def test_probes_never_touch_metrics_store_or_scheduler():
    for path in (SRC / "probes").glob("*.py"):
        bad = {m for m in imports(path) if m.startswith(("outagewatch.metrics",
               "outagewatch.scheduler", "outagewatch.recorder", "outagewatch.app",
               "outagewatch.web", "prometheus_client", "structlog"))}
        assert set() == bad, path.name


def test_only_the_cli_and_demo_import_the_composition_root():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel in {"cli.py", "app.py", "demo/scenario.py"}:
            continue
        assert "outagewatch.app" not in imports(path), rel
        assert "outagewatch.cli" not in imports(path) or rel == "__main__.py", rel


PURE_ALLOWED = {"__future__", "dataclasses", "enum", "math", "string", "typing", "collections.abc",
                "datetime", "outagewatch.model", "outagewatch.core"}


def test_core_is_pure():
    """core/ imports no I/O, no clocks, no logging: stdlib value types and model only."""
    for path in (SRC / "core").glob("*.py"):
        found = imports(path)
        assert set() == {m for m in found if m not in PURE_ALLOWED
                         and not m.startswith("outagewatch.core.")}, path.name
        text = path.read_text()
        for forbidden in ("time.time(", "time.monotonic(", "datetime.now(", ".now()"):
            assert forbidden not in text, (path.name, forbidden)
