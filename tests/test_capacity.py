"""Probe capacity: sized from the open-file limit, shared fairly between platforms (issue 10,
item 3)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outagewatch.capacity import DESCRIPTORS_PER_RUN, FairShare, budget


class TestBudget:
    @pytest.mark.parametrize(("files", "runs"), [(1024, 384), (20_000, 9_000),
                                                 (524_288, 235_930), (100, 1)])
    def test_runs_from_descriptors(self, files, runs):
        """Two descriptors per run (POP3's dup), after the daemon's own reserve."""
        assert runs == budget(files)
        assert budget(files) * DESCRIPTORS_PER_RUN <= files

    def test_the_soft_limit_is_raised_to_the_hard_one(self):
        """At start the soft open-file limit goes up to the hard limit (in a child process,
        so the test's own limit is left alone)."""
        code = (
            "import json, resource\n"
            "from outagewatch.capacity import raise_open_files\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard, 256), hard))\n"
            "before, after = raise_open_files()\n"
            "print(json.dumps([before, after, resource.getrlimit(resource.RLIMIT_NOFILE)]))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        before, after, (soft, hard) = json.loads(out.stdout)
        assert 256 >= before
        assert after == soft
        assert soft == min(hard, 1 << 20)


class TestFairShare:
    def test_a_platform_always_has_its_guarantee(self):
        """One platform filling everything it may borrow never takes another's share."""
        share = FairShare(10)
        share.configure({"bh": 5000, "us": 3})
        taken = 0
        while share.admit("bh"):
            taken += 1
        assert 7 == taken  # 10 minus the 3 that us (with 3 targets) may need
        assert [True, True, True] == [share.admit("us") for _ in range(3)]
        assert not share.admit("us")

    def test_room_that_frees_up_is_borrowed_again(self):
        share = FairShare(4)
        share.configure({"a": 10, "b": 10})
        assert [True] * 4 == [share.admit("a") for _ in range(2)] + \
            [share.admit("b") for _ in range(2)]
        assert not share.admit("a")
        share.release("b")
        assert not share.admit("a")  # b is below its guarantee: the room is b's
        assert share.admit("b")

    @given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), max_size=200),
           st.integers(1, 12))
    def test_never_over_capacity_and_guarantees_hold(self, steps, cap):
        """Whatever the order of admissions and releases: never more than the capacity in
        flight, and a platform below its guarantee is always admitted."""
        share = FairShare(cap)
        share.configure({"a": 50, "b": 2, "c": 1})
        flying = dict.fromkeys("abc", 0)
        for platform, take in steps:
            if take:
                below = flying[platform] < share.guarantee(platform)
                admitted = share.admit(platform)
                assert admitted or not below
                flying[platform] += admitted
            elif flying[platform]:
                share.release(platform)
                flying[platform] -= 1
            assert sum(flying.values()) == share.total <= cap
