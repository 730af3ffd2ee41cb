"""The history that lasts: each target's runs summed up per 5 minutes, and the time the
monitor saw it, as pure functions of the samples.

A ``Rollup`` is one target's runs at one location in one bucket ``[bucket, bucket + 300)``
(UTC seconds, ``bucket = floor(start / 300) * 300`` of each run's start): how many runs, how
many BAD (a failure, or an answer slower than the threshold), the exact p50, p95 and maximum
of their durations, and the results other than ``ok`` counted by class (``timeout``,
``refused``...; a slow ``ok`` is BAD but not an error class).

Percentiles are nearest-rank: of ``n`` durations sorted, the ``ceil(q * n)``-th; exact,
because the ``Accumulator`` keeps the durations of each target's open bucket and gives the
bucket's whole, current ``Rollup`` at each sample (the stored row is rewritten as samples
arrive, so it is always current).

After a restart a bucket is continued from its stored row (``Accumulator.resume``) and the
durations of the samples stored for it (the samples table keeps an hour). When fewer samples
than the row's runs are left (thinned while the store could not write), the missing runs are
stood in for by the row's figures: one at its maximum, a tenth of the rest at its p95, the
others at its p50; the bucket's p50 and p95 are then an approximation, its counts and
maximum stay exact.

``extend`` is the coverage rule: a run started at ``start`` sees the target until its next
run is due, ``start + interval``; it extends the current interval when it starts before that
interval's end plus ``interval + timeout`` (a run late by less than one whole run), and
opens a new one otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["BUCKET", "Accumulator", "Rollup", "bucket_of", "extend", "percentile"]

BUCKET = 300.0  # seconds: 288 buckets a day, 105,120 a year
MISSING_AT_P95 = 10  # of the runs a resumed bucket lost, one in this many stands at its p95


@dataclass(frozen=True, slots=True)
class Rollup:
    target: str
    location: str  # the vantage point ("" for one node)
    bucket: float  # the start of its 5 minutes, a multiple of BUCKET
    runs: int
    bad: int
    p50: float
    p95: float
    max: float
    errors: Mapping[str, int] = field(default_factory=dict)  # result -> runs, "ok" not counted


def bucket_of(start: float) -> float:
    return math.floor(start / BUCKET) * BUCKET


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 1) of sorted, non-empty ``ordered``."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def extend(current: tuple[float, float] | None, start: float, *, interval: float,
           timeout: float) -> tuple[float, float]:
    """The coverage interval a run started at ``start`` belongs to, after it: ``current``
    extended to ``start + interval``, or a new one. Its start is its key: an extended
    interval keeps it."""
    if current is not None and current[0] <= start <= current[1] + interval + timeout:
        return current[0], max(current[1], start + interval)
    return start, start + interval


@dataclass(slots=True)
class _Open:
    bucket: float
    durations: list[float]
    runs: int = 0
    bad: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Accumulator:
    """The open bucket of every (target, location): its durations and counts, so that each
    sample gives the bucket's whole, exact ``Rollup``. The bucket before the current one
    stays open too, for a run that reports late; a run of an older bucket, or of one
    before a resumed bucket, is not counted (``add`` returns None)."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], list[_Open]] = {}  # the previous and current

    def resume(self, rollup: Rollup, durations: Sequence[float]) -> None:
        """Continue a stored bucket (after a restart) with the durations of its samples
        still stored; see the module's note on the approximation when some are missing."""
        known = list(durations)
        missing = max(0, rollup.runs - len(known))
        if missing:
            at_p95 = (missing - 1) // MISSING_AT_P95
            known += [rollup.max] + [rollup.p95] * at_p95 + [rollup.p50] * (missing - 1 - at_p95)
        opened = _Open(rollup.bucket, known, rollup.runs, rollup.bad, dict(rollup.errors))
        self._open[(rollup.target, rollup.location)] = [opened]

    def add(self, target: str, location: str, *, start: float, duration: float, result: str,
            bad: bool) -> Rollup | None:
        """Count one run; its bucket's Rollup as it now stands, or None for a run too late
        to count (its bucket closed two buckets ago)."""
        bucket = bucket_of(start)
        kept = self._open.setdefault((target, location), [])
        found = next((b for b in kept if b.bucket == bucket), None)
        if found is None:
            if kept and bucket < kept[-1].bucket:
                return None  # its bucket is not open here: counting it would lose the rest
            found = _Open(bucket, [])
            kept.append(found)
            del kept[:-2]
        found.runs += 1
        found.bad += bad
        found.durations.append(duration)
        if result != "ok":
            found.errors[result] = found.errors.get(result, 0) + 1
        ordered = sorted(found.durations)
        return Rollup(target, location, bucket, found.runs, found.bad,
                      percentile(ordered, 0.5), percentile(ordered, 0.95), ordered[-1],
                      dict(found.errors))

    def forget(self, target: str) -> None:
        for key in [k for k in self._open if k[0] == target]:
            del self._open[key]
