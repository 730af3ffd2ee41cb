"""Notifications become envelopes: rendered for people (core/render), addressed to the
platform's list, and rendered again by each channel for the outbox."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING

import structlog

from outagewatch.core.render import Observed, render, render_maintenance
from outagewatch.store import Envelope, EnvelopeKey

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from outagewatch.core.incidents import Notification
    from outagewatch.core.maintenance import MaintenanceMail
    from outagewatch.core.render import Message
    from outagewatch.notify import Channel
    from outagewatch.topology import Topology

log = structlog.get_logger("outagewatch.engine")


class Composer:
    def __init__(self, topology: Topology, channels: Mapping[str, Channel]) -> None:
        self.topology = topology
        self.channels = dict(channels)

    def incident(self, notice: Notification, observations: Sequence[Observed],
                 now: float, *, seen: Mapping[str, str] | None = None) -> list[Envelope]:
        incident = notice.incident
        recipients = self.topology.incident_recipients.get(incident.platform, ())
        if not self._can_send(recipients, "incident_recipients", incident_id=incident.id,
                              kind=notice.kind.value):
            return []
        platform = self.topology.platforms[incident.platform]
        message = render(notice, platform, recipients=recipients, observations=observations,
                         templates=self.topology.templates, seen=seen)
        return self._envelopes(message, now)

    def maintenance(self, mail: MaintenanceMail, now: float) -> list[Envelope]:
        window = mail.window
        recipients = self.topology.info_recipients.get(window.platform, ())
        if not self._can_send(recipients, "info_recipients", window=window.id,
                              kind=mail.kind.value):
            return []
        platform = self.topology.platforms.get(window.platform)
        return self._envelopes(render_maintenance(
            mail, recipients=recipients,
            zone=platform.zone if platform is not None else UTC), now)

    def message(self, message: Message, now: float) -> list[Envelope]:
        """A message rendered elsewhere (the monthly report) into the outbox."""
        if not self._can_send(message.to, "info_recipients", thread=message.thread.key,
                              kind=message.kind):
            return []
        return self._envelopes(message, now)

    def _can_send(self, recipients: Sequence[str], what: str, **about: str) -> bool:
        if self.channels and recipients:
            return True
        log.warning("mail_not_sent", **about,
                    reason=f"no notify relay or no {what} configured")
        return False

    def _envelopes(self, message: Message, now: float) -> list[Envelope]:
        return [Envelope(EnvelopeKey(name, message.thread.key, lane, message.number),
                         message.kind, payload, now)
                for name, channel in self.channels.items()
                for lane, payload in channel.payloads(message, created=now).items()]
