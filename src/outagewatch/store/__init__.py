"""Durable state: the protocols every storage backend implements, and what they exchange.

The engine and the drainer decide in memory; they load their state at start
(``StateStore.load``) and write each change, the outbox's deliveries included, as one unit
of work (``StateStore.apply``: one transaction) through the writer. The API is async, so a
backend across a network never blocks the event loop.
A backend is a module of its own (``sqlite.py`` today) that passes the contract suite in
``tests/helpers/store_contract.py``; records are encoded by the versioned codecs in ``codecs.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from outagewatch.errors import OutagewatchError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from outagewatch.core.evaluator import Verdict
    from outagewatch.core.incidents import Book, Incident
    from outagewatch.core.maintenance import Window
    from outagewatch.core.quorum import Seen
    from outagewatch.core.rollup import Rollup

__all__ = [
    "Changes",
    "Delivery",
    "Envelope",
    "EnvelopeKey",
    "Interval",
    "OutageSpan",
    "State",
    "StateLocked",
    "StateStore",
    "StoreError",
    "StoredMessage",
    "StoredSample",
]


Interval = tuple[float, float]  # [start, end), Unix seconds

KEEP_UNWRITTEN_SAMPLES = 10_000  # beyond this, unwritten samples are thinned...
SAMPLES_PER_TARGET = 3  # ...to the latest few of each target
# unwritten rollups (10,000 targets: about 2 hours of buckets) beyond which the oldest
# buckets' go: a day-long store outage loses that day's rollups, not the daemon's memory
KEEP_UNWRITTEN_ROLLUPS = 250_000


class StoreError(OutagewatchError, OSError):
    """The state cannot be opened, read or written."""


class StateLocked(StoreError):
    """Another process holds the state: two daemons on one state would double every mail."""


@dataclass(frozen=True, slots=True)
class StoredSample:
    target: str
    start: float
    duration: float
    result: str
    phase: str | None
    bad: bool
    location: str = ""  # in a cluster: the vantage point of the node that ran it


@dataclass(frozen=True, slots=True)
class OutageSpan:
    """A target's declared outage, as the ledger keeps it: from its start to its restore
    (``end`` None while it lasts; a target removed during its outage ends it then)."""

    target: str
    platform: str
    start: float
    end: float | None
    incident: str | None  # the incident it was part of


@dataclass(frozen=True, slots=True, order=True)
class EnvelopeKey:
    """One message of a thread, for one channel and one lane (for SMTP: one recipient, so
    that a recipient that defers holds back only its own mails)."""

    channel: str
    thread: str  # a Thread key: incident:EU-2026-0001, maintenance:db-upgrade
    lane: str
    number: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message for one channel and lane, written to the outbox with the change that
    caused it. ``payload`` is what the channel rendered and will deliver, as JSON-ready
    data."""

    key: EnvelopeKey
    kind: str
    payload: Mapping[str, Any]
    created: float


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of an envelope so far: its state in the outbox, as the drainer left it."""

    key: EnvelopeKey
    status: str  # pending, sent, failed, superseded (an UPDATE the RESOLVED made stale)
    attempts: int
    next_attempt: float
    last_error: str | None
    payload: Mapping[str, Any]
    sent_at: float | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message of a thread as the outbox holds it, for the API and the CLI."""

    number: int
    kind: str
    channel: str
    lane: str
    status: str  # pending, sent, failed, superseded (an UPDATE the RESOLVED made stale)
    created: float
    sent_at: float | None
    attempts: int
    last_error: str | None
    payload: Mapping[str, Any]


@dataclass
class Changes:
    """One unit of work: everything a change of state writes, committed together or not at
    all. Later changes merge into earlier ones not yet written (the latest state of a key
    wins, samples and envelopes add up)."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)
    books: dict[str, Book] = field(default_factory=dict)
    incidents: dict[str, Incident] = field(default_factory=dict)
    windows: dict[str, Window] = field(default_factory=dict)
    envelopes: list[Envelope] = field(default_factory=list)
    deliveries: dict[EnvelopeKey, Delivery] = field(default_factory=dict)
    samples: list[StoredSample] = field(default_factory=list)
    keep_after: dict[str, float] = field(default_factory=dict)  # per target: prune older
    forgotten: set[str] = field(default_factory=set)  # targets whose state goes
    prune_mails_before: float | None = None  # sent and failed mails older than this go
    # a cluster: what this node's location sees of each target, for the leader's quorum...
    views: dict[str, Seen] = field(default_factory=dict)
    # ...and the leader's consensus: a target's outage start while in OUTAGE, else None
    consensus: dict[str, float | None] = field(default_factory=dict)
    # the ledger, kept after the target's samples are gone: per (target, location, bucket)
    # its runs' rollup; per (target, location, interval start) the end of the time the
    # monitor saw it; per (target, outage start) the outage
    rollups: dict[tuple[str, str, float], Rollup] = field(default_factory=dict)
    coverage: dict[tuple[str, str, float], float] = field(default_factory=dict)
    outages: dict[tuple[str, float], OutageSpan] = field(default_factory=dict)
    prune_rollups_before: float | None = None  # rollups of older buckets go
    # coverage and outages ended, incidents resolved and windows finished or cancelled
    # before this go
    prune_history_before: float | None = None

    def __bool__(self) -> bool:
        return any((self.verdicts, self.books, self.incidents, self.windows, self.envelopes,
                    self.deliveries, self.samples, self.forgotten, self.views, self.consensus,
                    self.rollups, self.coverage, self.outages,
                    self.prune_mails_before is not None, self.prune_rollups_before is not None,
                    self.prune_history_before is not None))

    def merge(self, later: Changes) -> None:
        for name in later.forgotten:
            self.verdicts.pop(name, None)
            self.views.pop(name, None)
            self.keep_after.pop(name, None)
            self.samples = [s for s in self.samples if s.target != name]
        self.forgotten = (self.forgotten - set(later.verdicts)) | later.forgotten
        self.verdicts.update(later.verdicts)
        self.views.update(later.views)
        self.consensus.update(later.consensus)
        self.books.update(later.books)
        self.incidents.update(later.incidents)
        self.windows.update(later.windows)
        self.envelopes += later.envelopes
        self.deliveries.update(later.deliveries)
        self.samples += later.samples
        self.keep_after.update(later.keep_after)
        self.rollups.update(later.rollups)
        self.coverage.update(later.coverage)
        self.outages.update(later.outages)
        if later.prune_mails_before is not None:
            self.prune_mails_before = max(self.prune_mails_before or 0.0,
                                          later.prune_mails_before)
        if later.prune_rollups_before is not None:
            self.prune_rollups_before = max(self.prune_rollups_before or 0.0,
                                            later.prune_rollups_before)
        if later.prune_history_before is not None:
            self.prune_history_before = max(self.prune_history_before or 0.0,
                                            later.prune_history_before)
        # while the store cannot write, changes pile up here: of the samples (kept for the
        # mails' observations and the API) only the latest few per target are worth keeping
        if len(self.samples) > KEEP_UNWRITTEN_SAMPLES:
            latest: dict[str, list[StoredSample]] = {}
            for sample in self.samples:
                latest.setdefault(sample.target, []).append(sample)
            self.samples = [s for kept in latest.values() for s in kept[-SAMPLES_PER_TARGET:]]
        if len(self.rollups) > KEEP_UNWRITTEN_ROLLUPS:
            newest = sorted(self.rollups, key=lambda key: key[2])[-KEEP_UNWRITTEN_ROLLUPS // 2:]
            self.rollups = {key: self.rollups[key] for key in newest}


@dataclass(frozen=True, slots=True)
class State:
    """What the engine starts from."""

    verdicts: Mapping[str, Verdict]
    books: Mapping[str, Book]
    windows: Mapping[str, Window]
    recent: Mapping[str, list[StoredSample]]  # per target, the latest few, oldest first
    outbox: list[tuple[Envelope, Delivery]]  # envelopes pending or failed, in creation order
    installation: str  # this state's own token, for ids that must never repeat
    views: Mapping[str, Seen] = field(default_factory=dict)  # a cluster: this location's
    consensus: Mapping[str, float] = field(default_factory=dict)  # targets in OUTAGE: start
    # per target, at this location: its latest rollup and the durations of the samples
    # still stored for that bucket (to continue it), and its latest coverage interval
    rollups: Mapping[str, tuple[Rollup, tuple[float, ...]]] = field(default_factory=dict)
    coverage: Mapping[str, Interval] = field(default_factory=dict)


class StateStore(Protocol):
    async def load(self, *, recent: int) -> State:
        """Everything the engine needs at start, with the ``recent`` latest samples of each
        target."""
        ...

    async def apply(self, changes: Changes) -> None:
        """Write one unit of work in one transaction; raise StoreError if it cannot."""
        ...

    async def incidents(self, *, limit: int = 50) -> list[Incident]:
        """The latest incidents, open and resolved, newest first."""
        ...

    async def thread(self, key: str) -> list[StoredMessage]:
        """The messages of a thread, in order."""
        ...

    async def rollups(self, targets: Sequence[str], start: float, end: float) -> list[Rollup]:
        """The rollups of ``targets`` (every location) whose bucket overlaps [start, end),
        by target, location and bucket."""
        ...

    async def series(self, targets: Sequence[str], start: float,
                     end: float) -> list[tuple[str, float, float, bool]]:
        """Per target and bucket overlapping [start, end), in order: the slowest location's
        p95 (seconds) and whether any run was BAD. The response-time chart's data, summed
        up where it is kept."""
        ...

    async def coverage(self, targets: Sequence[str], start: float,
                       end: float) -> dict[str, list[Interval]]:
        """Per target (every one asked for), the time some location saw it within
        [start, end): the union over locations, clipped to the range, in order."""
        ...

    async def outages(self, targets: Sequence[str], start: float,
                      end: float) -> list[OutageSpan]:
        """The outages of ``targets`` overlapping [start, end) (open ones included), by
        start."""
        ...

    async def incidents_between(self, start: float, end: float,
                                platform: str | None = None) -> list[Incident]:
        """Incidents overlapping [start, end) (from ``started_at`` to ``resolved_at``, open
        ones included), by start."""
        ...

    async def windows_between(self, start: float, end: float,
                              platform: str | None = None) -> list[Window]:
        """Maintenance windows overlapping [start, end) (to their end, or their close when
        later), cancelled ones included, by start."""
        ...

    async def health(self) -> str | None:
        """None while the store is as it should be; else what is wrong with it (a state
        file deleted under the daemon, a database out of reach)."""
        ...

    async def close(self) -> None: ...
