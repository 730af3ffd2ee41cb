"""The outbox as the drainer works it: in memory, loaded from the store at start, fed by the
engine as it decides, and written back through the writer.

Every envelope is a letter in a lane (channel, thread, lane); a lane's letters go in order
of their number, one at a time. A letter is normally tried only once it is durable (its
change written), so a crash can neither lose nor duplicate it; while the store cannot write
at all, letters go out anyway and are recorded when it can again (a mail about an outage
matters more than its bookkeeping).

An UPDATE that was never delivered when the RESOLVED of its thread and lane is queued behind
it is superseded: not sent (its news is stale, the RESOLVED says what holds now), kept with
that state. A failed letter can be resent: back to pending, attempts reset, same payload
(so the same Message-ID).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from outagewatch.store import Delivery, Envelope, EnvelopeKey

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


@dataclass
class Letter:
    key: EnvelopeKey
    kind: str
    payload: Mapping[str, Any]
    created: float
    attempts: int = 0
    next_attempt: float = 0.0
    status: str = "pending"  # pending, sent, failed, superseded
    last_error: str | None = None
    sent_at: float | None = None
    durable: bool = False  # its envelope is in the store
    recorded: bool = False  # its current delivery state is in the store
    tried: bool = False  # its state changed since it was queued

    def delivery(self) -> Delivery:
        return Delivery(self.key, self.status, self.attempts, self.next_attempt,
                        self.last_error, self.payload, self.sent_at)


UPDATE, RESOLVED = "update", "resolved"
DONE = frozenset({"sent", "superseded"})  # nothing more to do: leaves memory once recorded


def _lane(letter: Letter) -> tuple[str, str, str]:
    return (letter.key.channel, letter.key.thread, letter.key.lane)


class Queue:
    def __init__(self) -> None:
        self._letters: dict[EnvelopeKey, Letter] = {}

    def load(self, outbox: Iterable[tuple[Envelope, Delivery]]) -> None:
        """The store's pending and failed envelopes, at start."""
        for envelope, delivery in outbox:
            if delivery.status in DONE:
                continue
            self._letters[envelope.key] = Letter(
                envelope.key, envelope.kind, delivery.payload, envelope.created,
                delivery.attempts, delivery.next_attempt, delivery.status,
                delivery.last_error, delivery.sent_at, durable=True, recorded=True)

    def add(self, envelopes: Iterable[Envelope]) -> None:
        for envelope in envelopes:
            self._letters[envelope.key] = Letter(envelope.key, envelope.kind, envelope.payload,
                                                 envelope.created,
                                                 next_attempt=envelope.created)

    def changed(self, letter: Letter) -> Delivery:
        """The drainer changed a letter's state: what to write."""
        letter.tried, letter.recorded = True, False
        return letter.delivery()

    def written(self, envelopes: Iterable[Envelope], deliveries: Iterable[Delivery]) -> None:
        """These envelopes and delivery states are in the store now; a sent letter leaves
        memory once both are."""
        for envelope in envelopes:
            letter = self._letters.get(envelope.key)
            if letter is not None:
                letter.durable = True
                letter.recorded = letter.recorded or not letter.tried
                self._forget_if_done(letter)
        for delivery in deliveries:
            letter = self._letters.get(delivery.key)
            if letter is not None and letter.delivery() == delivery:
                letter.recorded = True
                self._forget_if_done(letter)

    def _forget_if_done(self, letter: Letter) -> None:
        if letter.status in DONE and letter.durable and letter.recorded:
            del self._letters[letter.key]

    def supersede(self) -> list[Letter]:
        """Pending UPDATEs with a RESOLVED of their lane queued behind them: superseded
        (the caller records them)."""
        resolved: dict[tuple[str, str, str], int] = {}
        for letter in self._letters.values():
            if letter.kind == RESOLVED and letter.status == "pending":
                lane = _lane(letter)
                resolved[lane] = max(resolved.get(lane, -1), letter.key.number)
        stale = [letter for letter in self._letters.values()
                 if letter.kind == UPDATE and letter.status == "pending"
                 and letter.key.number < resolved.get(_lane(letter), -1)]
        for letter in stale:
            letter.status = "superseded"
        return sorted(stale, key=lambda item: item.key)

    def followers(self, stale: list[Letter]) -> list[tuple[Letter, int]]:
        """For each lane with superseded letters: its next pending letter, and the number
        of the last letter before the superseded ones (the message it now answers)."""
        first: dict[tuple[str, str, str], int] = {}
        for letter in stale:
            lane = _lane(letter)
            first[lane] = min(first.get(lane, letter.key.number), letter.key.number)
        found = []
        for lane, number in first.items():
            after = [letter for letter in self._letters.values() if _lane(letter) == lane
                     and letter.status == "pending" and letter.key.number > number]
            if after:
                found.append((min(after, key=lambda item: item.key.number), number - 1))
        return found

    def resend(self, thread: str, number: int, *, lane: str | None = None,
               now: float) -> list[Letter]:
        """The failed letters of message ``number`` of ``thread`` (a thread id, any case, or
        a full thread key), optionally of one lane (recipient), back to pending."""
        wanted = thread.lower()
        found = [letter for letter in self._letters.values()
                 if letter.status == "failed" and letter.key.number == number
                 and wanted in {letter.key.thread.lower(),
                                letter.key.thread.partition(":")[2].lower()}
                 and (lane is None or letter.key.lane.lower() == lane.lower())]
        for letter in found:
            letter.status, letter.attempts, letter.next_attempt = "pending", 0, now
            letter.last_error = None
        return sorted(found, key=lambda item: item.key)

    def heads(self) -> list[Letter]:
        """The next letter of each lane: pending, the lowest number."""
        first: dict[tuple[str, str, str], Letter] = {}
        for letter in self._letters.values():
            if letter.status != "pending":
                continue
            lane = (letter.key.channel, letter.key.thread, letter.key.lane)
            known = first.get(lane)
            if known is None or letter.key.number < known.key.number:
                first[lane] = letter
        return sorted(first.values(), key=lambda item: (item.created, item.key))

    def due(self, now: float, *, undurable: bool) -> list[Letter]:
        return [letter for letter in self.heads()
                if letter.next_attempt <= now and (letter.durable or undurable)]

    def next_attempt(self, *, undurable: bool) -> float | None:
        moments = [letter.next_attempt for letter in self.heads()
                   if letter.durable or undurable]
        return min(moments, default=None)

    def stats(self, now: float) -> tuple[int, float, int]:
        """Pending letters, the age of the oldest one (0 when none), and letters whose
        delivery state is not yet in the store."""
        pending = [letter for letter in self._letters.values() if letter.status == "pending"]
        oldest = min((letter.created for letter in pending), default=None)
        unrecorded = sum(1 for letter in self._letters.values()
                         if not (letter.durable and letter.recorded))
        return len(pending), 0.0 if oldest is None else max(0.0, now - oldest), unrecorded

    def sent_unrecorded(self) -> bool:
        """Is a delivery made and not yet in the store?"""
        return any(letter.status == "sent" and not letter.recorded
                   for letter in self._letters.values())

    def failed(self) -> list[Letter]:
        return [letter for letter in self._letters.values() if letter.status == "failed"]
