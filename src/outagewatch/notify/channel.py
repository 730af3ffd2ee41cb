"""The seam where a notification channel goes: render a message for the channel, deliver it.

A channel is stateless about retries: the drainer (``drainer.py``) owns order, backoff,
retries and giving up, for every channel alike. A channel says what became of one attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from outagewatch.core.render import Message
    from outagewatch.notify.queue import Letter


@dataclass(frozen=True, slots=True)
class Delivered:
    """The other side took the message. ``close`` finishes the conversation politely (e.g.
    SMTP QUIT); the drainer calls it after recording the delivery, so that nothing between
    the other side's acceptance and that record can make it send the message again."""

    close: Callable[[], Awaitable[None]] | None = field(default=None)


@dataclass(frozen=True, slots=True)
class Deferred:
    """Try again later; ``payload``, when given, replaces the stored one (e.g. narrowed to
    the recipients that were deferred)."""

    error: str
    payload: Mapping[str, Any] | None = field(default=None)


@dataclass(frozen=True, slots=True)
class Refused:
    """The message cannot go as it is (a permanent refusal, a rejected login)."""

    error: str


Delivery = Delivered | Deferred | Refused


class Channel(Protocol):
    @property
    def name(self) -> str:
        """The channel's name in the outbox (``smtp``)."""
        ...

    def payloads(self, message: Message, *, created: float) -> dict[str, dict[str, Any]]:
        """What this channel will deliver for ``message``, per lane (a recipient, for SMTP),
        as JSON-ready data. Computed once, when the message enters the outbox, so every
        attempt sends the same thing."""
        ...

    def rethread(self, payload: Mapping[str, Any], *, parent: int) -> Mapping[str, Any]:
        """``payload`` answering message ``parent`` of its thread instead of the one before
        it (the messages between were superseded and never sent)."""
        ...

    async def deliver(self, letter: Letter) -> Delivery:
        """One attempt; never raises for what the other side did."""
        ...
