"""Value objects shared by every layer. Standard library only."""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from collections.abc import Mapping


class ProbeType(enum.StrEnum):
    HTTP = "http"
    SMTP = "smtp"
    IMAP = "imap"
    POP3 = "pop3"
    MAILLOOP = "mailloop"


class Phase(enum.StrEnum):
    """The fixed phase vocabulary; each probe module exports the subset it uses as PHASES."""

    DNS = "dns"
    CONNECT = "connect"  # TCP; for HTTP also the TLS handshake (aiohttp has no TLS signal)
    TLS = "tls"  # implicit TLS handshake
    GREETING = "greeting"  # SMTP 220 banner, IMAP '* OK', POP3 '+OK'
    EHLO = "ehlo"
    STARTTLS = "starttls"  # STARTTLS/STLS command, handshake, and the capability refresh
    LOGIN = "login"  # SMTP AUTH, IMAP LOGIN, POP3 USER/PASS
    SELECT = "select"
    STAT = "stat"
    LOGOUT = "logout"  # SMTP QUIT, IMAP LOGOUT, POP3 QUIT
    FIRST_BYTE = "first_byte"
    TRANSFER = "transfer"
    SUBMIT = "submit"  # mail loop: SMTP MAIL, RCPT and DATA
    DELIVERY = "delivery"  # mail loop: from submission until the mail is seen
    CLEANUP = "cleanup"  # mail loop: deleting the probe's own mails


class Result(enum.StrEnum):
    """Outcome of one probe run: ``ok`` or the class of error (a bounded label set)."""

    OK = "ok"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    DNS = "dns"
    TLS = "tls"
    PROTOCOL = "protocol"
    AUTH = "auth"
    STATUS = "status"
    BODY = "body"
    LOST = "lost"  # mail loop: the mail was not seen before the deadline
    SPAM = "spam"  # mail loop: the mail was found in the junk folder


@dataclass(frozen=True, slots=True)
class Sample:
    """One probe run of one target (DESIGN 4.1)."""

    target: str
    started_at: datetime  # wall clock, UTC
    duration: float  # seconds, monotonic clock
    result: Result
    phase: Phase | None = None  # the phase that failed, None when ok
    phases: Mapping[Phase, float] = field(default_factory=dict)
    detail: str = ""  # short human-readable reason, never a secret
    cert_expiry: float | None = None  # peer certificate notAfter, Unix seconds

    @property
    def ok(self) -> bool:
        return self.result is Result.OK

    def is_bad(self, threshold: float) -> bool:
        """BAD = failed, or succeeded slower than ``threshold`` (DESIGN 4.2)."""
        return not self.ok or self.duration > threshold


@overload
def iso_utc(ts: float) -> str: ...
@overload
def iso_utc(ts: float | None) -> str | None: ...
def iso_utc(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 in UTC with a ``Z``, the one time format machines read (API
    answers, ``probe --json``, log fields): ``2026-12-16T03:00:00Z``, milliseconds when the
    time has a fraction of a second (``2026-12-16T03:00:00.250Z``)."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, UTC)
    spec = "seconds" if moment.microsecond == 0 else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def sample_json(sample: Sample) -> dict[str, object]:
    """A sample as JSON-ready data (the status API and ``probe --json``): times in ISO 8601
    UTC, durations in seconds with ``_s`` in their names."""
    return {
        "started_at": iso_utc(sample.started_at.timestamp()),
        "duration_s": round(sample.duration, 6),
        "result": sample.result.value,
        "phase": sample.phase.value if sample.phase else None,
        "phases_s": {p.value: round(v, 6) for p, v in sample.phases.items()},
        "detail": sample.detail,
        "cert_expiry": iso_utc(sample.cert_expiry),
    }


@dataclass(frozen=True, slots=True)
class Rule:
    """The outage rule of one target, in seconds (config's defaults merged with overrides)."""

    interval: float
    timeout: float
    threshold: float
    window: float
    recover_after: int


DEFAULT_UPDATE_INTERVAL = 3600.0  # seconds between UPDATE mails: the agreement's "hourly"


def one_line(text: str) -> str:
    """Text that stays one line wherever it goes (a mail header, a log line, a table): every
    line break ``str.splitlines`` knows (\\n, \\r, U+2028, U+0085, ...) and every other
    control character becomes a space, and runs of spaces one."""
    return " ".join("".join(" " if unicodedata.category(c)[0] == "C" else c
                            for c in text).split())
