"""The layout tells the architecture: these import rules are checked, not just written."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "outagewatch"
ARCHITECTURE = Path(__file__).parents[1] / "docs" / "architecture.md"


def imports(path: Path) -> set[str]:
    found: set[str] = set()
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


def test_only_the_cli_demo_and_cluster_node_import_the_composition_root():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel in {"cli.py", "app.py", "cluster/node.py", "demo/scenario.py"}:
            continue  # the composition roots (one node, a cluster node) and their callers
        assert "outagewatch.app" not in imports(path), rel
        assert "outagewatch.cli" not in imports(path) or rel == "__main__.py", rel


# csv and io: the report's CSV is written to an in-memory string, never a file
PURE_ALLOWED = {"__future__", "dataclasses", "enum", "math", "string", "typing", "collections.abc",
                "csv", "io",
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


def allowed_imports() -> dict[str, set[str] | None]:
    """docs/architecture.md's module table: module path -> the package's modules it may
    import (None: anything)."""
    table: dict[str, set[str] | None] = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        module = cells[0].strip("`")
        allowed = cells[2]
        if allowed.startswith("everything"):
            table[module] = None
        else:
            table[module] = {w for w in re.split(r"[,\s]+", allowed) if w and w != "-"}
    return table


def _top(module: str) -> str:
    """outagewatch.core.render -> core; outagewatch.store.sqlite -> store."""
    return module.split(".")[1]


def test_the_architecture_table_is_true():
    """Every module's imports of the package are the ones docs/architecture.md allows, and
    every module is in the table."""
    table = allowed_imports()
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel in {"__init__.py", "__main__.py"}:
            continue
        package = rel.split("/")[0]
        key = rel if rel in table else f"{package}/" if f"{package}/" in table else None
        if key is None and rel.endswith("/__init__.py"):
            continue  # a package's re-exports: its modules are checked one by one
        assert key is not None, f"{rel} is missing from docs/architecture.md"
        allowed = table[key]
        if allowed is None:
            continue
        own = {_top(m) for m in imports(path) if m.startswith("outagewatch.")}
        home = rel.split("/")[0].removesuffix(".py")
        extra = own - allowed - {home}
        assert set() == extra, f"{rel} imports {sorted(extra)}, not in its row"


def test_the_engine_and_the_drainer_know_only_the_store_protocols():
    """The seam for a second backend: nothing but app.py names a backend module."""
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("store/") or rel == "app.py":
            continue
        assert not {m for m in imports(path) if m.startswith("outagewatch.store.sqlite")}, rel

