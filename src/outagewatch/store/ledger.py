"""What both backends share of the ledger (rollups, coverage, outages): the encoding of a
rollup's error classes, and the reads' last steps done alike in Python."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from outagewatch.core import availability

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from outagewatch.core.incidents import Incident
    from outagewatch.core.maintenance import Window
    from outagewatch.store import Interval


def errors_to_text(errors: Mapping[str, int]) -> str | None:
    """A rollup's error classes as JSON; None (NULL, no bytes) when there are none."""
    return json.dumps(dict(sorted(errors.items())), separators=(",", ":")) if errors else None


def errors_from_text(text: str | None) -> dict[str, int]:
    return {str(k): int(v) for k, v in json.loads(text).items()} if text else {}


def union(targets: Sequence[str], rows: Iterable[tuple[str, float, float]], start: float,
          end: float) -> dict[str, list[Interval]]:
    """Per target, the union of its intervals (every location's), clipped to [start, end)."""
    found: dict[str, list[Interval]] = {name: [] for name in targets}
    for target, first, last in rows:
        found.setdefault(target, []).append((max(first, start), min(last, end)))
    return {target: availability.union(spans) for target, spans in found.items()}


def incidents_between(found: Iterable[Incident], start: float, end: float,
                      platform: str | None) -> list[Incident]:
    """Of incidents not resolved before ``start``, those overlapping [start, end)."""
    return sorted((i for i in found if i.started_at < end
                   and (i.resolved_at is None or i.resolved_at > start)
                   and (platform is None or i.platform == platform)),
                  key=lambda i: (i.started_at, i.id))


def windows_between(found: Iterable[Window], start: float, end: float,
                    platform: str | None) -> list[Window]:
    return sorted((w for w in found if w.start < end
                   and max(w.end, w.closed_at or w.end) > start
                   and (platform is None or w.platform == platform)),
                  key=lambda w: (w.start, w.id))
