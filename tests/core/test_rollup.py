"""The rollup of a target's runs per 5 minutes, and the coverage rule: pure, checked
against a brute-force sort of every bucket's durations."""

from __future__ import annotations

import random

import pytest

from outagewatch.core.rollup import BUCKET, Accumulator, Rollup, bucket_of, extend, percentile


def add(acc: Accumulator, start: float, duration: float = 1.0, result: str = "ok",
        bad: bool = False, target: str = "t", location: str = "") -> Rollup | None:
    return acc.add(target, location, start=start, duration=duration, result=result, bad=bad)


def test_buckets_are_utc_multiples_of_five_minutes():
    assert (0.0, 0.0, 300.0, 1_764_460_800.0) == (
        bucket_of(0.0), bucket_of(299.999), bucket_of(300.0), bucket_of(1_764_460_999.5))
    assert -300.0 == bucket_of(-0.5)


def test_percentiles_are_nearest_rank():
    ordered = [float(n) for n in range(1, 21)]  # 1..20
    assert (10.0, 19.0, 20.0) == (percentile(ordered, 0.5), percentile(ordered, 0.95),
                                  percentile(ordered, 1.0))
    assert (7.0, 7.0) == (percentile([7.0], 0.5), percentile([7.0], 0.95))


def test_each_sample_gives_its_whole_bucket():
    acc = Accumulator()
    assert Rollup("t", "", 0.0, 1, 0, 2.0, 2.0, 2.0, {}) == add(acc, 10.0, 2.0)
    add(acc, 70.0, 9.0, "timeout", bad=True)
    add(acc, 130.0, 40.0, "ok", bad=True)  # slow: BAD, but no error class
    assert Rollup("t", "", 0.0, 4, 2, 2.0, 40.0, 40.0, {"timeout": 1, "refused": 1}) == add(
        acc, 190.0, 1.0, "refused")
    assert Rollup("t", "", 300.0, 1, 0, 3.0, 3.0, 3.0, {}) == add(acc, 300.0, 3.0)


def test_targets_and_locations_are_kept_apart():
    acc = Accumulator()
    add(acc, 10.0, 1.0)
    add(acc, 10.0, 5.0, location="fra")
    rollup = add(acc, 20.0, 2.0, target="u")
    assert rollup is not None
    assert 1 == rollup.runs
    rollup = add(acc, 30.0, 3.0)
    assert rollup is not None
    assert (2, 3.0) == (rollup.runs, rollup.max)


def test_a_late_run_counts_in_the_bucket_before_not_older():
    acc = Accumulator()
    add(acc, 290.0, 1.0)
    add(acc, 310.0, 1.0)
    late = add(acc, 295.0, 4.0)  # reported after a run of the next bucket
    assert late is not None
    assert (0.0, 2, 4.0) == (late.bucket, late.runs, late.max)
    add(acc, 610.0)
    assert add(acc, 200.0) is None  # two buckets back: no longer open


def test_the_stored_row_matches_brute_force():
    rng = random.Random(13)
    acc = Accumulator()
    runs: dict[float, list[tuple[float, str, bool]]] = {}
    last: dict[float, Rollup] = {}
    start = 1_764_460_800.0
    for _ in range(2000):
        start += rng.uniform(0.0, 20.0)
        duration = rng.choice([rng.uniform(0.01, 2.0), rng.uniform(0.01, 60.0)])
        result = rng.choice(["ok", "ok", "ok", "timeout", "refused"])
        bad = result != "ok" or duration > 30.0
        rollup = add(acc, start, duration, result, bad)
        assert rollup is not None
        last[rollup.bucket] = rollup
        runs.setdefault(bucket_of(start), []).append((duration, result, bad))
    assert set(runs) == set(last)
    for bucket, seen in runs.items():
        ordered = sorted(d for d, _, _ in seen)
        errors: dict[str, int] = {}
        for _, result, _ in seen:
            if result != "ok":
                errors[result] = errors.get(result, 0) + 1
        n = len(ordered)
        expected = Rollup("t", "", bucket, n, sum(b for _, _, b in seen),
                          ordered[-(-n // 2) - 1], ordered[-(-n * 95 // 100) - 1],
                          ordered[-1], errors)
        assert expected == last[bucket]


def test_a_resumed_bucket_with_its_samples_is_exact():
    acc = Accumulator()
    acc.resume(Rollup("t", "", 0.0, 2, 1, 1.0, 5.0, 5.0, {"timeout": 1}), (5.0, 1.0))
    rollup = add(acc, 200.0, 3.0)
    assert Rollup("t", "", 0.0, 3, 1, 3.0, 5.0, 5.0, {"timeout": 1}) == rollup


def test_a_resumed_bucket_without_its_samples_is_approximated():
    """Thinned samples: the lost runs stand at the row's max, p95 and p50; counts and the
    maximum stay exact."""
    acc = Accumulator()
    acc.resume(Rollup("t", "", 0.0, 21, 0, 1.0, 8.0, 9.0, {}), ())
    rollup = add(acc, 200.0, 1.5)
    assert rollup is not None
    assert (22, 9.0, 1.0, 8.0) == (rollup.runs, rollup.max, rollup.p50, rollup.p95)


def test_a_late_run_before_a_resumed_bucket_is_not_counted():
    """Its bucket's other runs are in the stored row only: rewriting it would lose them."""
    acc = Accumulator()
    acc.resume(Rollup("t", "", 300.0, 2, 0, 1.0, 1.0, 1.0, {}), (1.0, 1.0))
    assert add(acc, 299.0) is None


def test_forget_drops_a_targets_open_buckets():
    acc = Accumulator()
    add(acc, 10.0)
    acc.forget("t")
    rollup = add(acc, 20.0)
    assert rollup is not None
    assert 1 == rollup.runs


@pytest.mark.parametrize(("current", "start", "expected"), [
    (None, 100.0, (100.0, 160.0)),                 # the first run
    ((100.0, 160.0), 160.0, (100.0, 220.0)),       # on time
    ((100.0, 160.0), 255.0, (100.0, 315.0)),       # late by a whole interval + timeout: still
    ((100.0, 160.0), 255.5, (255.5, 315.5)),       # later: the monitor was blind between
    ((100.0, 400.0), 150.0, (100.0, 400.0)),       # a run inside changes nothing
    ((100.0, 160.0), 50.0, (50.0, 110.0)),         # before the interval: a new one
])
def test_coverage_extends_or_starts_anew(current, start, expected):
    assert expected == extend(current, start, interval=60.0, timeout=35.0)


def test_a_year_of_buckets():
    assert 105_120 == 365 * 86_400 / BUCKET
