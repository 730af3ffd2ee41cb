"""How many probe runs the daemon may hold open at once, and which platform gets a free one.

A run that hangs costs a descriptor for its whole timeout (a POP3 run two: its socket and
the dup that shuts it down), so the limit comes from the open-file limit, which the daemon
raises to its hard limit at start. It is a budget, not a queue: nothing waits for it while it
has room.

When it is full, the room is shared fairly (``FairShare``): each platform is guaranteed
``capacity / platforms`` runs, or as many as it has targets if fewer, and a platform past its
guarantee only borrows what no other platform's unused guarantee holds back. So thousands of
blackholed targets on one platform can never take the runs of another platform's targets.
"""

from __future__ import annotations

import resource
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

DESCRIPTORS_PER_RUN = 2  # the worst case: a POP3 run holds its socket and a dup of it
RESERVED_DESCRIPTORS = 256  # at least: the state store, the web server, logs, the relay, DNS
RESERVED_SHARE = 10  # and a tenth of the limit, whichever is more
NR_OPEN_DEFAULT = 1 << 20  # Linux's fs.nr_open default: the most a soft limit may be


def open_files() -> int:
    """The soft limit on open descriptors now."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return NR_OPEN_DEFAULT if soft == resource.RLIM_INFINITY else soft


def raise_open_files() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one (an unprivileged process may); return
    the limit before and after. A refusal (a sandbox, an odd hard limit) keeps the old one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NR_OPEN_DEFAULT if hard == resource.RLIM_INFINITY else hard
    before = open_files()
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return before, before
    return before, open_files()


def budget(descriptors: int) -> int:
    """Probe runs that ``descriptors`` open files allow, after the daemon's own."""
    reserved = max(RESERVED_DESCRIPTORS, descriptors // RESERVED_SHARE)
    return max(1, (descriptors - reserved) // DESCRIPTORS_PER_RUN)


class FairShare:
    """Runs in flight per platform within one capacity, with a guaranteed share each.

    ``admit`` takes a run if the platform is within its guarantee, or if the capacity has
    room beyond what the other platforms' unused guarantees keep for them. That keeps
    ``in flight + unused guarantees <= capacity``, so a guaranteed run is always admitted.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._targets: dict[str, int] = {}
        self._guarantee: dict[str, int] = {}
        self._flying: dict[str, int] = {}
        self.total = 0

    def configure(self, targets_per_platform: Mapping[str, int]) -> None:
        """The platforms and how many targets each has (a platform never needs more)."""
        self._targets = {p: n for p, n in targets_per_platform.items() if n > 0}
        share = self.capacity // max(1, len(self._targets))
        self._guarantee = {p: min(n, share) for p, n in self._targets.items()}

    def guarantee(self, platform: str) -> int:
        return self._guarantee.get(platform, 0)

    def in_flight(self, platform: str) -> int:
        return self._flying.get(platform, 0)

    def _unused(self, *, besides: str) -> int:
        return sum(max(0, g - self._flying.get(p, 0))
                   for p, g in self._guarantee.items() if p != besides)

    def can_admit(self, platform: str) -> bool:
        flying = self._flying.get(platform, 0)
        if flying < self._guarantee.get(platform, 0):
            return True
        return self.total + self._unused(besides=platform) < self.capacity

    def admit(self, platform: str) -> bool:
        """Take a run for ``platform`` if it may have one now."""
        if not self.can_admit(platform):
            return False
        self._flying[platform] = self._flying.get(platform, 0) + 1
        self.total += 1
        return True

    def release(self, platform: str) -> None:
        flying = self._flying.get(platform, 0)
        if flying <= 0:
            return
        self._flying[platform] = flying - 1
        self.total -= 1
