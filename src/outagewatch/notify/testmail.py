"""``outagewatch notify test``: one clearly marked test mail through the configured relays to a
platform's list, with every answer of every relay tried, so a broken relay shows now and not
at the first real incident. It needs no running daemon and touches no state.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from outagewatch.errors import OutagewatchError
from outagewatch.notify.channel import Delivered, Refused
from outagewatch.notify.smtp import SmtpChannel, header_safe, list_id

if TYPE_CHECKING:
    from outagewatch.config import Settings
    from outagewatch.notify.smtp import Attempt

AUDIENCES = ("incident", "info")


class TestMailRefused(OutagewatchError, ValueError):
    """``notify test`` cannot send: no notify section, an unknown platform, an empty list."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True, slots=True)
class TestReport:
    __test__ = False

    accepted: bool  # every recipient accepted by a relay
    text: str


def recipients_of(settings: Settings, platform: str, audience: str) -> list[str]:
    if settings.notify is None:
        raise TestMailRefused("no notify section in the configuration: there is no relay to "
                              "test")
    config = settings.platforms.get(platform)
    if config is None:
        raise TestMailRefused(f"unknown platform {platform!r} (known: "
                              f"{', '.join(sorted(settings.platforms))})")
    if audience not in AUDIENCES:
        raise TestMailRefused(f"unknown list {audience!r} (incident or info)")
    to = config.incident_recipients if audience == "incident" else config.info_recipients
    if not to:
        raise TestMailRefused(f"platform {platform} has no {audience} list: set "
                              f"platforms.{platform}.{audience}_recipients")
    return list(to)


async def send_test_mail(settings: Settings, platform: str, audience: str = "incident",
                         *, source: str = "") -> TestReport:
    """Send the test mail; the report says what each relay answered."""
    to = recipients_of(settings, platform, audience)
    assert settings.notify is not None
    host = socket.gethostname()
    channel = SmtpChannel(settings.notify, installation="test")
    now = datetime.now(UTC)
    token = secrets.token_hex(6)
    where = f"host {host}" + (f", configuration {source}" if source else "")
    payload = {
        "to": to,
        "subject": f"[TEST] outagewatch: test mail to the {platform} {audience} list from "
                   f"{host}",
        "body": (f"This is a test mail from outagewatch ({where}), sent with "
                 f"'outagewatch notify test' at {now:%Y-%m-%d %H:%M:%S} UTC to check that "
                 f"mail to the {platform} {audience} list arrives.\n\n"
                 "It is not about an incident or a maintenance window: nothing to do.\n"),
        "message_id": f"<test.{token}@{channel.domain}>",
        "list_id": list_id(platform, audience, channel.domain),
    }
    mail = channel.compose(payload, created=now.timestamp())
    outcome, attempts = await channel.send(mail, to)
    if isinstance(outcome, Delivered) and outcome.close is not None:
        await outcome.close()
    head = f"test mail {payload['message_id']} to the {platform} {audience} list"
    lines = [f"{head}: {', '.join(to)}"]
    for number, attempt in enumerate(attempts, 1):
        lines += _attempt_lines(number, len(settings.notify.smtp), attempt)
    verdicts, accepted = _verdicts(to, attempts)
    lines += verdicts
    return TestReport(accepted=accepted, text="\n".join(lines))


def _attempt_lines(number: int, of: int, attempt: Attempt) -> list[str]:
    lines = [f"relay {number} of {of}: {attempt.relay}"]
    width = max((len(r.step) for r in attempt.replies), default=0)
    for reply in attempt.replies:
        texts = (header_safe(reply.text) if reply.code is None else reply.text).splitlines()
        for index, text in enumerate(texts or [""]):
            step = reply.step if index == 0 else ""
            # as the relay wrote it: 250-... on every line of a reply but its last
            code = "" if reply.code is None else (
                f"{reply.code}{'-' if index < len(texts) - 1 else ' '}")
            lines.append(f"  {step:<{width}}  {code}{text}".rstrip())
    if isinstance(attempt.outcome, Delivered):
        lines.append("  => took the mail")
    elif isinstance(attempt.outcome, Refused):
        lines.append(f"  => refused: {attempt.outcome.error}")
    elif attempt.outcome is not None:
        lines.append(f"  => deferred: {attempt.outcome.error}")
    return lines


def _verdicts(to: list[str], attempts: list[Attempt]) -> tuple[list[str], bool]:
    """Per recipient: accepted (by which relay: ``accepted`` is set only after the 250 to
    DATA) or refused (the relay's last answer about it, else why no relay took the mail)."""
    took: dict[str, str] = {}
    why: dict[str, str] = {}
    for attempt in attempts:
        for recipient in attempt.accepted:
            took.setdefault(recipient, attempt.relay)
        for recipient, answer in attempt.refused.items():
            why[recipient] = f"{answer} ({attempt.relay})"
    error = next((str(getattr(a.outcome, "error", "")) for a in reversed(attempts)
                  if not isinstance(a.outcome, Delivered)), "no relay took it")
    lines = [f"{recipient}: accepted by {took[recipient]}" if recipient in took
             else f"{recipient}: refused: {why.get(recipient, error)}" for recipient in to]
    return lines, all(recipient in took for recipient in to)
