"""Durable state: the protocols every storage backend implements, and what they exchange.

Two clients, two protocols: the engine loads its state at start and writes each change as
one unit of work (``StateStore.apply``: one transaction), and the drainer works the outbox
(``Outbox``). Both are async, so a backend across a network never blocks the event loop.
A backend is a module of its own (``sqlite.py`` today) that passes the contract suite in
``tests/helpers/store_contract.py``; records are encoded by the versioned codecs in ``codecs.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from outagewatch.errors import OutagewatchError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from outagewatch.core.evaluator import Verdict
    from outagewatch.core.incidents import Book, Incident
    from outagewatch.core.maintenance import Window

__all__ = [
    "Changes",
    "Envelope",
    "Outbox",
    "OutboxItem",
    "State",
    "StateLocked",
    "StateStore",
    "StoreError",
    "StoredMessage",
    "StoredSample",
]


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


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message for one channel, to be written to the outbox with the change that caused
    it. ``payload`` is what the channel rendered and will deliver, as JSON-ready data."""

    thread: str  # a Thread key: incident:EU-2026-0001, maintenance:db-upgrade
    number: int
    kind: str
    channel: str
    payload: Mapping[str, Any]
    created: float


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """An envelope waiting in the outbox."""

    id: int
    thread: str
    number: int
    kind: str
    channel: str
    payload: Mapping[str, Any]
    created: float
    attempts: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message of a thread as the outbox holds it, for the API and the CLI."""

    number: int
    kind: str
    channel: str
    status: str  # pending, sent, failed
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
    samples: list[StoredSample] = field(default_factory=list)
    keep_after: dict[str, float] = field(default_factory=dict)  # per target: prune older
    forgotten: set[str] = field(default_factory=set)  # targets whose state goes

    def __bool__(self) -> bool:
        return any((self.verdicts, self.books, self.incidents, self.windows, self.envelopes,
                    self.samples, self.forgotten))

    def merge(self, later: Changes) -> None:
        for name in later.forgotten:
            self.verdicts.pop(name, None)
            self.keep_after.pop(name, None)
            self.samples = [s for s in self.samples if s.target != name]
        self.forgotten = (self.forgotten - set(later.verdicts)) | later.forgotten
        self.verdicts.update(later.verdicts)
        self.books.update(later.books)
        self.incidents.update(later.incidents)
        self.windows.update(later.windows)
        self.envelopes += later.envelopes
        self.samples += later.samples
        self.keep_after.update(later.keep_after)


@dataclass(frozen=True, slots=True)
class State:
    """What the engine starts from."""

    verdicts: Mapping[str, Verdict]
    books: Mapping[str, Book]
    windows: Mapping[str, Window]
    recent: Mapping[str, list[StoredSample]]  # per target, the latest few, oldest first


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

    async def close(self) -> None: ...


class Outbox(Protocol):
    async def due(self, now: float) -> list[OutboxItem]:
        """The oldest pending envelope of each thread and channel, if its time has come:
        later ones wait for earlier ones, so every thread arrives in order."""
        ...

    async def next_attempt(self) -> float | None:
        """When the next envelope can go (None when nothing is pending)."""
        ...

    async def mark_sent(self, item: int, now: float) -> None: ...

    async def mark_retry(self, item: int, *, payload: Mapping[str, Any], at: float,
                         error: str) -> None:
        """Try again at ``at``, with ``payload`` (a channel may narrow it, e.g. to the
        recipients that were deferred)."""
        ...

    async def mark_failed(self, item: int, error: str) -> None: ...

    async def stats(self, now: float) -> tuple[int, float]:
        """Pending envelopes, and the age of the oldest one (0 when none)."""
        ...
