"""The configuration contract: one YAML file plus ``OUTAGEWATCH_*`` environment overrides.

Every model forbids unknown keys, every duration goes through ``parse_duration``, and secrets
are ``SecretStr`` resolved at load time from exactly one of ``password``, ``password_file`` or
``password_env``.
"""

from __future__ import annotations

import contextvars
import email.utils
import functools
import json
import os
import re
import socket
import string
import zoneinfo
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import holidays
import yaml
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from outagewatch import configerrors
from outagewatch.core.render import MULTILINE_FIELDS, TEMPLATE_FIELDS
from outagewatch.durations import format_duration, parse_duration
from outagewatch.errors import ConfigError
from outagewatch.model import DEFAULT_UPDATE_INTERVAL, ProbeType, Rule

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

def _between(low: float, high: float) -> Callable[[timedelta], timedelta]:
    def check(value: timedelta) -> timedelta:
        if not low <= value.total_seconds() <= high:
            raise ValueError(f"must be between {format_duration(low)} and "
                             f"{format_duration(high)}")
        return value

    return check


# Durations (30s, 15m, 1h30m, ISO 8601, seconds; never a boolean) within sane bounds: a
# typo of 10ms or 10000d would otherwise flood a list or stop a timer.
DAY = 86400.0
_Human = BeforeValidator(parse_duration)
Interval = Annotated[timedelta, _Human, AfterValidator(_between(0.1, DAY))]
Timeout = Annotated[timedelta, _Human, AfterValidator(_between(0.1, 3600))]
Threshold = Annotated[timedelta, _Human, AfterValidator(_between(0.05, 3600))]
Window = Annotated[timedelta, _Human, AfterValidator(_between(0.1, 7 * DAY))]
UpdateInterval = Annotated[timedelta, _Human, AfterValidator(_between(1, 7 * DAY))]
Coalesce = Annotated[timedelta, _Human, AfterValidator(_between(0.1, 300))]
Backoff = Annotated[timedelta, _Human, AfterValidator(_between(0.1, DAY))]
CommandTimeout = Annotated[timedelta, _Human, AfterValidator(_between(0.1, 300))]
Retention = Annotated[timedelta, _Human, AfterValidator(_between(DAY, 100 * 365 * DAY))]
MAX_CONFIG_BYTES = 4 * 1024 * 1024
Port = Annotated[int, Field(ge=1, le=65535)]
TlsMode = Literal["none", "starttls", "implicit"]

_NAME = configerrors.NAME_PATTERN
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_DEFAULT_PORTS: Mapping[str, Mapping[str, int]] = {
    "smtp": {"none": 25, "starttls": 587, "implicit": 465},
    "imap": {"none": 143, "starttls": 143, "implicit": 993},
    "pop3": {"none": 110, "starttls": 110, "implicit": 995},
}


# The targets whose secrets a load resolves (None: all); see load_settings(only_targets=...).
_ONLY_TARGETS: contextvars.ContextVar[Collection[str] | None] = contextvars.ContextVar(
    "only_targets", default=None)


def _secret_needed(data: Mapping[str, Any]) -> bool:
    """Resolve the secrets of this section? Always, unless the load is for some targets
    only: then only theirs (not the relay's, the API token or the database password)."""
    only = _ONLY_TARGETS.get()
    return only is None or data.get("name") in only


def credential_path(value: object) -> Path:
    """A secret file; a relative name is looked up in $CREDENTIALS_DIRECTORY when systemd
    passes credentials (LoadCredential=), else relative to the working directory."""
    path = Path(str(value))
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(directory) / path if directory and not path.is_absolute() else path


def resolve_secret(data: dict[str, Any], key: str, *, inline: bool) -> dict[str, Any]:
    """One secret from exactly one of ``<key>`` (inline, where allowed), ``<key>_file`` (its
    content, less the final line break) or ``<key>_env``; the value lands in ``data[key]``.
    An empty file or variable is a mistake, not an empty secret."""
    if data.get(key) is not None and not inline:
        raise ValueError(f"{key}: never in the config file; use {key}_file or {key}_env")
    given = [k for k in (key, f"{key}_file", f"{key}_env") if data.get(k)]
    if len(given) > 1:
        raise ValueError(f"give only one of {', '.join(given)}")
    data = dict(data)
    if data.get(f"{key}_file"):
        path = credential_path(data[f"{key}_file"])
        try:
            data[key] = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            reason = f"{key}_file: cannot read {str(path)!r}: {exc.strerror}"
            raise ValueError(reason) from None
        if not data[key]:
            raise ValueError(f"{key}_file: {str(path)!r} is empty")
    elif data.get(f"{key}_env"):
        name = str(data[f"{key}_env"])
        value = os.environ.get(name)
        if value is None:
            raise ValueError(f"{key}_env: environment variable {name} is not set")
        if not value:
            raise ValueError(f"{key}_env: environment variable {name} is empty")
        data[key] = value
    return data


def _existing(value: Path) -> Path:
    """A file the configuration names must be there."""
    if not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


ExistingFile = Annotated[Path, AfterValidator(_existing)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_address(value: str) -> str:
    if not _ADDRESS.match(value):
        raise ValueError(f"not an e-mail address: {value!r}")
    return value


Address = Annotated[str, BeforeValidator(lambda v: _check_address(str(v)))]


class StatusPageConfig(_Model):
    enabled: bool = Field(default=True, description="serve the status page at / and /status "
                                                    "and the Atom feed at /feed.atom")
    public: bool = Field(default=False, description="the public view: no hostnames, error "
                                                    "details, internal notes or API links, "
                                                    "and no read token needed")
    title: str = Field("Service status", min_length=1, max_length=200,
                       description="the page's and the feed's title")


class ServerConfig(_Model):
    listen: str = Field("127.0.0.1:9817", description="host:port for /metrics, /healthz, /readyz")
    token_file: Path | None = Field(None, description="file holding the operator API token")
    token_env: str | None = Field(None, description="environment variable holding it")
    token: SecretStr | None = Field(None, exclude=True, description="resolved; not a key")
    read_token_file: Path | None = Field(
        None, description="file holding a token every read of /api/v1 needs (for a listen "
                          "address others can reach); the operator token works too")
    read_token_env: str | None = Field(None, description="environment variable holding it")
    read_token: SecretStr | None = Field(None, exclude=True, description="resolved; not a key")
    status_page: StatusPageConfig = StatusPageConfig()

    @model_validator(mode="before")
    @classmethod
    def _resolve_token(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if not _secret_needed({}):
            return data
        data = resolve_secret(data, "token", inline=False)
        data = resolve_secret(data, "read_token", inline=False)
        for key in ("token", "read_token"):
            if data.get(key) is not None and len(str(data[key])) < 16:
                raise ValueError(f"{key}: too short (use at least 16 characters)")
        return data

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, e.g. 127.0.0.1:9817 or [::1]:9817")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class RuleDefaults(_Model):
    interval: Interval = Field(timedelta(seconds=60), description="time between probe starts")
    timeout: Timeout = Field(timedelta(seconds=35), description="total deadline of one probe run")
    threshold: Threshold = Field(timedelta(seconds=30), description="slower than this = BAD")
    window: Window = Field(timedelta(minutes=15), description="BAD for this long = OUTAGE")
    recover_after: int = Field(2, ge=1, description="consecutive GOOD samples that end an outage")
    loop_threshold: Threshold = Field(
        timedelta(minutes=5), description="mail-loop targets: a mail seen later than this "
        "after its submission = BAD (delivery takes longer than a login)")
    loop_timeout: Timeout = Field(
        timedelta(minutes=6), description="mail-loop targets: a mail not seen this long after "
        "its submission is lost")


class EngineConfig(_Model):
    max_in_flight: int | None = Field(
        None, ge=1, description="probe runs in flight at once, all targets; never waited for "
        "while a platform is within its fair share; default and ceiling: what the open-file "
        "limit allows (two descriptors a run)")
    pop3_threads: int = Field(32, ge=1, description="unused: each POP3 target has its own "
                              "worker thread (kept so that older configurations load)")
    uvloop: bool = Field(default=False, description="run on uvloop instead of asyncio's loop")


class CalendarConfig(_Model):
    country: str | None = Field(None, description="ISO country for public holidays, e.g. DE")
    subdivision: str | None = Field(None, description="state or region, e.g. BY")
    timezone: str = Field("UTC", description="IANA zone in which business days count")
    closures: list[date] = Field(default_factory=list, description="extra non-working days")

    @model_validator(mode="after")
    def _known(self) -> CalendarConfig:
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: unknown time zone {self.timezone!r}") from None
        if self.country is not None:
            try:
                holidays.country_holidays(self.country, subdiv=self.subdivision)
            except NotImplementedError:
                raise ValueError(f"country: no holiday calendar for {self.country!r}") \
                    from None
        elif self.subdivision is not None:
            raise ValueError("subdivision: needs a country")
        return self


class PlatformConfig(_Model):
    incident_recipients: list[Address] = Field(
        default_factory=list, description="incident mails (OPEN, UPDATE, RESOLVED) go here")
    info_recipients: list[Address] = Field(
        default_factory=list, description="maintenance mails go here")
    calendar: CalendarConfig = CalendarConfig()


class _Credentials(_Model):
    username: str | None = Field(None, description="login name; enables AUTH/LOGIN")
    password: SecretStr | None = Field(None, description="inline password (prefer the others)")
    password_file: Path | None = Field(None, description="file holding the password")
    password_env: str | None = Field(None, description="environment variable holding it")

    @model_validator(mode="before")
    @classmethod
    def _resolve_password(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if not _secret_needed(data):
            return data  # a target (or relay) this command does not use
        return resolve_secret(data, "password", inline=True)

    @model_validator(mode="after")
    def _password_needs_user(self) -> _Credentials:
        if self.password is not None and not self.username:
            raise ValueError("a password is set but no username")
        return self

    def secret(self) -> str | None:
        return self.password.get_secret_value() if self.password else None


class _Tls(_Model):
    tls_verify: bool = Field(default=True, description="verify the server certificate")
    ca_file: ExistingFile | None = Field(None, description="CA bundle (PEM) instead of the "
                                         "system's")



class _TargetBase(_Model):
    name: str = Field(pattern=_NAME, description="unique, [a-z0-9_.-]+")
    platform: str = Field(description="key of the platform this service belongs to")
    impact: str = Field("", description="user impact, quoted in incident mails")
    critical: bool = Field(default=True, description="a business-critical component")
    interval: Interval | None = None
    timeout: Timeout | None = None
    threshold: Threshold | None = None
    window: Window | None = None
    recover_after: int | None = Field(None, ge=1)
    locations: list[Annotated[str, Field(pattern=_NAME)]] | None = Field(
        None, min_length=1, description="cluster: probed from these locations only")


class HttpTarget(_TargetBase, _Tls):
    type: Literal["http"]
    url: str = Field(description="http:// or https:// URL of the Web-Mail login page")
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] | None = Field(
        None, description="acceptable status codes; default any 2xx"
    )
    expect_body: str | None = Field(None, description="regex searched in the first 1 MiB")
    max_redirects: int = Field(5, ge=0, le=30)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL with a host")
        return value

    @field_validator("expect_body")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def uses_tls(self) -> bool:
        return self.url.startswith("https:")


class _MailTarget(_TargetBase, _Tls, _Credentials):
    host: str = Field(min_length=1, description="host name (also used to verify the certificate)")
    port: Port | None = Field(None, description="default per type and tls mode")
    tls: TlsMode = Field("starttls", description="none | starttls | implicit")

    type: Literal["smtp", "imap", "pop3"]

    @property
    def effective_port(self) -> int:
        return self.port or _DEFAULT_PORTS[self.type][self.tls]

    @property
    def uses_tls(self) -> bool:
        return self.tls != "none"


class SmtpTarget(_MailTarget):
    type: Literal["smtp"]
    ehlo_hostname: str = Field(
        default_factory=socket.gethostname, description="name sent in EHLO"
    )

class ImapTarget(_MailTarget):
    type: Literal["imap"]
    username: str = Field(description="login name (required)")
    mailbox: str = Field("INBOX", min_length=1)

class Pop3Target(_MailTarget):
    type: Literal["pop3"]
    username: str = Field(description="login name (required)")

class LoopSubmit(_Tls, _Credentials):
    """Where a mail-loop target's mail goes in: the SMTP probe's keys."""

    host: str = Field(min_length=1, description="host name (also used to verify the certificate)")
    port: Port | None = Field(None, description="default 25 / 587 / 465 by tls mode")
    tls: TlsMode = Field("starttls", description="none | starttls | implicit")
    ehlo_hostname: str = Field(
        default_factory=socket.gethostname, description="name sent in EHLO"
    )

    @property
    def effective_port(self) -> int:
        return self.port or _DEFAULT_PORTS["smtp"][self.tls]


class LoopFetch(_Tls, _Credentials):
    """Where a mail-loop target's mail must arrive: the IMAP (or POP3) probe's keys."""

    type: Literal["imap", "pop3"] = Field("imap", description="imap | pop3")
    host: str = Field(min_length=1, description="host name (also used to verify the certificate)")
    port: Port | None = Field(None, description="default 143 / 993 (imap), 110 / 995 (pop3) "
                              "by tls mode")
    tls: TlsMode = Field("starttls", description="none | starttls | implicit")
    username: str = Field(description="login name (required)")
    mailbox: str = Field("INBOX", min_length=1, description="where the mail must arrive; "
                         "dedicated to this target: the probe deletes its own mails there")
    junk: str | None = Field(None, min_length=1, description="a mail found in this folder "
                             "instead is spam (BAD unless spam_is_bad: false)")
    spam_is_bad: bool = Field(default=True, description="false: a mail filed in junk still "
                              "arrived (the run is ok)")

    @model_validator(mode="after")
    def _junk_needs_imap(self) -> LoopFetch:
        if self.type == "pop3" and self.junk is not None:
            raise ValueError("junk needs type: imap (POP3 has one mailbox)")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or _DEFAULT_PORTS[self.type][self.tls]


class MailLoopTarget(_TargetBase):
    """Submit a mail over SMTP and see it arrive over IMAP (issue 14)."""

    type: Literal["mailloop"]
    impact: str = Field("mail is delayed or not delivered",
                        description="user impact, quoted in incident mails")
    submit: LoopSubmit
    fetch: LoopFetch
    sender: Address = Field(alias="from", description="envelope and From: address")
    to: Address = Field(description="the mailbox's address")
    cleanup_after: Window = Field(
        timedelta(hours=1), description="probe mails of earlier runs (ours by their header) "
        "older than this are deleted from the mailbox")

    @model_validator(mode="wrap")
    @classmethod
    def _nested_secrets(cls, data: Any, handler: Any) -> Any:
        """``submit`` and ``fetch`` have no name: they follow the target's, whether this
        load resolves its secrets or not (see ``load_settings(only_targets=...)``)."""
        needed = not isinstance(data, dict) or _secret_needed(data)
        token = _ONLY_TARGETS.set(None if needed else frozenset())
        try:
            return handler(data)
        finally:
            _ONLY_TARGETS.reset(token)

    @property
    def host(self) -> str:
        return self.submit.host

    @property
    def uses_tls(self) -> bool:
        return False  # two connections, two TLS contexts: the probe asks for them itself


Target = Annotated[
    HttpTarget | SmtpTarget | ImapTarget | Pop3Target | MailLoopTarget,
    Field(discriminator="type"),
]


class SmtpRelay(_Tls, _Credentials):
    host: str = Field(min_length=1)
    port: Port | None = Field(None, description="default 25 / 587 / 465 by tls mode")
    tls: TlsMode = "starttls"
    timeout: CommandTimeout = Field(timedelta(seconds=30), description="per SMTP command")

    @property
    def effective_port(self) -> int:
        return self.port or _DEFAULT_PORTS["smtp"][self.tls]

    @property
    def address(self) -> str:
        """``host:port``, how logs and ``notify test`` name the relay."""
        return f"{self.host}:{self.effective_port}"


def _relay_list(value: Any) -> Any:
    """One relay (a mapping) or several (a list), tried in order for each mail."""
    if isinstance(value, list) and not value:
        raise ValueError("no relay: give one, e.g. {host: smtp.example.com, port: 587}, or "
                         "a list of them")
    return [value] if isinstance(value, dict | SmtpRelay) else value


class NotifyConfig(_Model):
    smtp: Annotated[list[SmtpRelay], BeforeValidator(_relay_list)] = Field(
        min_length=1, description="the relay, or a list of relays tried in order for each "
                                  "mail (the next one when a relay defers, cannot be "
                                  "reached or refuses our login)")
    sender: str = Field(description='From: header, e.g. "NOC <noc@example.com>"')
    update_interval: UpdateInterval = Field(timedelta(seconds=DEFAULT_UPDATE_INTERVAL),
                                            description="time between UPDATE mails")
    coalesce: Coalesce = Field(timedelta(seconds=5),
                               description="changes of an incident within this time of the "
                                           "first make one UPDATE")
    retry_backoff: Backoff = Field(timedelta(seconds=5),
                                   description="first retry delay; doubles per attempt")
    retry_max: Backoff = Field(timedelta(minutes=5), description="longest retry delay")
    templates: Path | None = Field(
        None, description="directory of subject.txt, open.txt, update.txt, resolved.txt")

    @model_validator(mode="wrap")
    @classmethod
    def _one_relay_named_as_written(cls, data: Any, handler: Any) -> Any:
        """One relay written as a mapping (not a list): its errors name ``notify.smtp.host``,
        not ``notify.smtp[0].host``."""
        try:
            return handler(data)
        except ValidationError as exc:
            if not (isinstance(data, dict) and isinstance(data.get("smtp"), dict)):
                raise
            errors: list[Any] = []
            for error in exc.errors():
                loc = tuple(error["loc"])
                if loc[:2] == ("smtp", 0):
                    loc = ("smtp", *loc[2:])
                errors.append({"type": error["type"], "loc": loc, "input": error["input"],
                               **({"ctx": error["ctx"]} if "ctx" in error else {})})
            raise ValidationError.from_exception_data(exc.title, errors) from None

    @field_validator("templates")
    @classmethod
    def _valid_templates(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read_templates(value)
        return value

    def template_texts(self) -> dict[str, str]:
        """The operator's templates; the mail renderer falls back to its own for the rest."""
        return _read_templates(self.templates) if self.templates is not None else {}

    @field_validator("sender")
    @classmethod
    def _valid_sender(cls, value: str) -> str:
        _check_address(email.utils.parseaddr(value)[1] or value)
        return value


TEMPLATE_NAMES = ("subject", "open", "update", "resolved")


def _read_templates(directory: Path) -> dict[str, str]:
    if not directory.is_dir():
        raise ValueError(f"not a directory: {directory}")
    texts = {}
    for name in TEMPLATE_NAMES:
        path = directory / f"{name}.txt"
        if not path.exists():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        texts[name] = _checked_template(path.name, text, subject=name == "subject")
    if not texts:
        raise ValueError(f"no template in {directory} (expected any of "
                         f"{', '.join(n + '.txt' for n in TEMPLATE_NAMES)})")
    return texts


def _checked_template(name: str, text: str, *, subject: bool) -> str:
    """A template that renders: placeholders the renderer fills, and a subject that stays one
    line whatever the values (a line break in a header stopped every mail)."""
    template = string.Template(text)
    if not template.is_valid():
        raise ValueError(f"{name}: a '$' that is no placeholder (write $$ for $)")
    used = set(template.get_identifiers())
    unknown = sorted(used - TEMPLATE_FIELDS)
    if unknown:
        raise ValueError(f"{name}: unknown placeholder ${unknown[0]} (known: "
                         f"{', '.join('$' + f for f in sorted(TEMPLATE_FIELDS))})")
    if not subject:
        return text
    text = text.strip()
    if "\n" in text or "\r" in text:
        raise ValueError(f"{name}: a subject is one line")
    spanning = sorted(used & MULTILINE_FIELDS)
    if spanning:
        raise ValueError(f"{name}: ${spanning[0]} spans lines and cannot be in a subject")
    return text


def _check_ordered(start: AwareDatetime, end: AwareDatetime) -> None:
    if end <= start:
        raise ValueError("end: must be after start")


class WindowConfig(_Model):
    """A maintenance window, in the configuration file and in the operator API alike."""

    id: str = Field(pattern=_NAME, description="unique, [a-z0-9_.-]+")
    platform: str
    targets: list[str] = Field(default_factory=list, description="default: all of the platform")
    start: AwareDatetime
    end: AwareDatetime
    kind: Literal["planned", "emergency"] = "planned"
    description: str = ""
    impact: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> WindowConfig:
        _check_ordered(self.start, self.end)
        return self


class WindowTimes(_Model):
    """A window's new start and/or end (the operator API's move); one left out is kept."""

    start: AwareDatetime | None = None
    end: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> WindowTimes:
        if self.start is None and self.end is None:
            raise ValueError("end: give start, end or both")
        if self.start is not None and self.end is not None:
            _check_ordered(self.start, self.end)
        return self


class ReportConfig(_Model):
    monthly: bool = Field(
        default=False, description="mail the previous month's availability report to each "
        "platform's info_recipients on the first business day of the month (in the "
        "platform's calendar)")


class MaintenanceConfig(_Model):
    notice_days: int = Field(3, ge=0, description="business days a planned window needs")
    windows: list[WindowConfig] = Field(default_factory=list)


Lease = Annotated[timedelta, _Human, AfterValidator(_between(3, 300))]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
_NODE = configerrors.NODE_PATTERN


class StateConfig(_Model):
    path: Path = Field(Path("/var/lib/outagewatch/state.db"),
                       description="SQLite state file (one node); or state.url")
    url: str | None = Field(None, description="PostgreSQL instead of the file, for a cluster: "
                            "postgresql://user@host:5432/db (no password in it)")
    password: SecretStr | None = Field(None, description="never inline: password_file or "
                                       "password_env")
    password_file: Path | None = Field(None, description="file holding the database password")
    password_env: str | None = Field(None, description="environment variable holding it")
    sslmode: SslMode | None = Field(None, description="TLS to the database, as libpq names it")
    sslrootcert: ExistingFile | None = Field(None, description="CA bundle (PEM) for "
                                             "verify-ca/full")
    keep_mails: Retention | None = Field(None, description="sent and failed mails older "
                                         "than this leave the state (pending ones never do); "
                                         "default: kept for ever, as the history they are")
    keep_rollups: Retention = Field(timedelta(days=400),
                                    description="each target's 5-minute rollups older than "
                                                "this leave the state")
    keep_history: Retention | None = Field(None, description="outages, coverage, incidents "
                                           "and maintenance windows ended longer ago than "
                                           "this leave the state; default: kept for ever")

    @model_validator(mode="before")
    @classmethod
    def _one_backend(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("path") is not None and data.get("url") is not None:
            raise ValueError("url: give state.path (SQLite) or state.url (PostgreSQL), not both")
        if data.get("url") is None and any(data.get(k) for k in (
                "password_file", "password_env", "sslmode", "sslrootcert")):
            raise ValueError("url: the database settings need state.url")
        return resolve_secret(data, "password", inline=False) if _secret_needed({}) else data

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise ValueError("not a URL (postgresql://user@host:5432/db)") from None
        del port  # parsed only to check it
        if parts.scheme not in {"postgresql", "postgres"}:
            raise ValueError("must start with postgresql:// (the cluster's state is "
                             "PostgreSQL; one node uses state.path)")
        if parts.password is not None:
            raise ValueError("the password never goes in the URL: use state.password_file or "
                             "state.password_env")
        if not parts.hostname or not parts.path.strip("/"):
            raise ValueError("needs a host and a database: postgresql://user@host:5432/db")
        return value


    def secret(self) -> str | None:
        return self.password.get_secret_value() if self.password else None

    @property
    def where(self) -> str:
        """The state for messages: the file, or the database's host:port/db (no user)."""
        if self.url is None:
            return str(self.path)
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 5432}/{parts.path.strip('/')}"


class ClusterConfig(_Model):
    node: str = Field(pattern=_NODE, description="unique per process; default: the host name")
    location: str = Field(pattern=_NAME, description="the vantage point this node probes "
                          "from; default: the node name")
    locations: list[Annotated[str, Field(pattern=_NAME)]] = Field(
        min_length=1, description="the vantage points expected; default: [location]")
    quorum: int = Field(ge=1, description="locations that must agree; default: a majority")
    lease: Lease = Field(timedelta(seconds=15), description="leadership lease: a dead "
                         "leader is replaced within about this")
    advertise: str | None = Field(None, description="host:port where the other nodes reach "
                                  "this node's API (changes sent to a node that does not "
                                  "lead are forwarded to the leader); default: server.listen, "
                                  "with the host name when it listens on every address")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("node") is None:
            data["node"] = socket.gethostname().split(".")[0] or "outagewatch"
        if data.get("location") is None:
            data["location"] = str(data["node"]).lower()
        if data.get("locations") is None:
            data["locations"] = [data["location"]]
        if data.get("quorum") is None and isinstance(data["locations"], list):
            data["quorum"] = len(data["locations"]) // 2 + 1
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ClusterConfig:
        twice = sorted({n for n in self.locations if self.locations.count(n) > 1})
        if twice:
            raise ValueError(f"locations: {', '.join(twice)} listed twice")
        if self.location not in self.locations:
            raise ValueError(f"location: {self.location!r} is not one of cluster.locations "
                             f"({', '.join(self.locations)})")
        if self.quorum > len(self.locations):
            raise ValueError(f"quorum: {self.quorum} is more than the "
                             f"{len(self.locations)} locations")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OUTAGEWATCH_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerConfig = ServerConfig()
    defaults: RuleDefaults = RuleDefaults()
    engine: EngineConfig = EngineConfig()
    platforms: dict[Annotated[str, Field(pattern=_NAME)], PlatformConfig] = Field(min_length=1)
    targets: list[Target] = Field(min_length=1)
    notify: NotifyConfig | None = None
    maintenance: MaintenanceConfig = MaintenanceConfig()
    report: ReportConfig = ReportConfig()
    state: StateConfig = StateConfig()
    cluster: ClusterConfig | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it.
        del settings_cls, dotenv_settings, file_secret_settings
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        problems: list[str] = []
        seen: set[str] = set()
        for index, target in enumerate(self.targets):
            where = self.where(index)
            if target.name in seen:
                problems.append(f"{where}.name: duplicate target name {target.name!r}")
            seen.add(target.name)
            if target.platform not in self.platforms:
                known = ", ".join(sorted(self.platforms))
                problems.append(
                    f"{where}.platform: unknown platform {target.platform!r} (known: {known})"
                )
            rule = self.rule_for(target)
            if rule.timeout <= rule.threshold:
                problems.append(self._pair(index, "timeout", "threshold", (
                    ("must be greater than {other} ({value}) so that a slow answer is "
                    "measured, not cut off"),
                    ("must be less than {key} ({value}) so that a slow answer is measured, "
                    "not cut off"))))
        problems += self._window_problems()
        problems += self._cluster_problems()
        if problems:
            raise ConfigError(list(dict.fromkeys(problems)))  # a default's problem once
        return self

    def where(self, index: int) -> str:
        """A target in messages: ``targets[imap-eu]``, or ``targets[6]`` when its name is
        shared with another target."""
        return f"targets[{self._labels[index]}]"

    @functools.cached_property
    def _labels(self) -> dict[int, str]:
        return configerrors.target_labels([{"name": t.name} for t in self.targets])

    def _pair(self, index: int, key: str, other: str, texts: tuple[str, str]) -> str:
        """A problem between two rule values of a target, said where it was written: once
        at ``defaults.<key>`` when the target inherits both, else at the key the target sets
        itself. ``texts`` say it from ``key`` ({other}, {value}: the other's value) and from
        ``other`` ({key}, {value}: the key's value)."""
        target = self.targets[index]
        rule = self.rule_for(target)
        mine, theirs = getattr(target, key), getattr(target, other)
        if mine is None and theirs is None:
            value = format_duration(getattr(rule, other))
            return f"defaults.{key}: " + texts[0].format(other=f"defaults.{other}", value=value)
        if mine is not None:
            value = format_duration(getattr(rule, other))
            if theirs is None:
                value += ", from defaults"
            return f"{self.where(index)}.{key}: " + texts[0].format(other=other, value=value)
        value = format_duration(getattr(rule, key)) + ", from defaults"
        return f"{self.where(index)}.{other}: " + texts[1].format(key=key, value=value)

    def _window_problems(self) -> list[str]:
        problems: list[str] = []
        platform_of = {t.name: t.platform for t in self.targets}
        seen: set[str] = set()
        for index, window in enumerate(self.maintenance.windows):
            where = f"maintenance.windows[{index}]"
            if window.id in seen:
                problems.append(f"{where}.id: duplicate window id {window.id!r}")
            seen.add(window.id)
            if window.platform not in self.platforms:
                problems.append(f"{where}.platform: unknown platform {window.platform!r}")
            problems += [f"{where}.targets: {name!r} is no target of platform "
                         f"{window.platform!r}" for name in window.targets
                         if platform_of.get(name) != window.platform]
        return problems

    def _cluster_problems(self) -> list[str]:
        if self.cluster is not None and self.state.url is None:
            return [("cluster: needs state.url (PostgreSQL): the nodes of a cluster share "
                     "their state there")]
        expected = set(self.cluster.locations) if self.cluster is not None else set()
        problems: list[str] = []
        for index, target in enumerate(self.targets):
            if target.locations is None:
                continue
            if self.cluster is None:
                problems.append(f"{self.where(index)}.locations: only in a cluster (no "
                                "cluster section)")
                continue
            unknown = [n for n in target.locations if n not in expected]
            if unknown:
                problems.append(f"{self.where(index)}.locations: {', '.join(unknown)} not in "
                                f"cluster.locations ({', '.join(self.cluster.locations)})")
        return problems

    def locations_of(self, target: Target) -> tuple[str, ...]:
        """The locations that probe ``target`` (one node: its own, nameless)."""
        if self.cluster is None:
            return ("",)
        return tuple(target.locations or self.cluster.locations)

    def quorum_for(self, target: Target) -> int:
        """Locations that must agree on ``target``: the cluster's quorum, or all of the
        target's own locations when it lists fewer."""
        if self.cluster is None:
            return 1
        return min(self.cluster.quorum, len(self.locations_of(target)))

    def rule_for(self, target: Target) -> Rule:
        d = self.defaults
        loop = isinstance(target, MailLoopTarget)
        return Rule(
            interval=(target.interval or d.interval).total_seconds(),
            timeout=(target.timeout or (d.loop_timeout if loop else d.timeout)).total_seconds(),
            threshold=(target.threshold or (d.loop_threshold if loop else d.threshold)
                       ).total_seconds(),
            window=(target.window or d.window).total_seconds(),
            recover_after=target.recover_after or d.recover_after,
        )


def config_warnings(settings: Settings) -> list[str]:
    """What loads but will not do what an operator expects, one line each: printed by
    ``check-config`` and logged (``config_warning``) when the daemon starts."""
    warnings = []
    if settings.notify is None:
        warnings.append("notify: no section: no incident or maintenance mail is sent to "
                        "anyone (add notify: {smtp: {host: ...}, sender: ...})")
    for name, platform in settings.platforms.items():
        if not platform.incident_recipients:
            warnings.append(f"platforms.{name}.incident_recipients: empty: outages of "
                            f"platform {name} are mailed to nobody")
        if not platform.info_recipients:
            warnings.append(f"platforms.{name}.info_recipients: empty: maintenance of "
                            f"platform {name} is announced to nobody")
    server = settings.server
    if server.status_page.enabled and server.status_page.public and server.read_token is None:
        warnings.append("server.status_page.public: the public page hides hosts, errors and "
                        "tickets, but the API's reads on the same listener show them to "
                        "whoever reaches it: set server.read_token_file or read_token_env")
    for index, target in enumerate(settings.targets):
        rule = settings.rule_for(target)
        if rule.interval > rule.window:
            warnings.append(settings._pair(index, "interval", "window", (  # noqa: SLF001
                ("longer than {other} ({value}): one BAD run is an outage, no second run "
                "falls within the window"),
                ("shorter than {key} ({value}): one BAD run is an outage, no second run "
                "falls within the window"))))
        if rule.threshold >= rule.window:
            warnings.append(settings._pair(index, "threshold", "window", (  # noqa: SLF001
                ("not shorter than {other} ({value}): a slow run is BAD only once the "
                "window has passed"),
                ("not longer than {key} ({value}): a slow run is BAD only once the window "
                "has passed"))))
    return list(dict.fromkeys(warnings))  # a default's warning once, not once per target


def load_settings(path: Path | str, *, only_targets: Collection[str] | None = None) -> Settings:
    """Load and validate the configuration file; raise ConfigError with one line per problem.

    ``only_targets``: resolve the secrets (password_file, password_env) of these targets
    only; the others load without their password (``outagewatch probe -t NAME``). The daemon
    and ``check-config`` resolve all."""
    data = _read(Path(path))
    origins, problems = _environment(data)
    token = _ONLY_TARGETS.set(None if only_targets is None else frozenset(only_targets))
    try:
        settings = Settings(**data)
    except SettingsError as exc:  # an OUTAGEWATCH_* variable that is not the JSON it must be
        field = _SETTINGS_FIELD.search(str(exc))
        name = f"OUTAGEWATCH_{field.group(1).upper()}" if field else "an OUTAGEWATCH_* variable"
        raise ConfigError([(f"{name} (environment): not valid JSON for a section; set one key "
                           f"with {name}__KEY=value, or give the whole section as JSON")]) \
            from None
    except ValidationError as exc:
        labels = configerrors.target_labels(_targets_as_given(data, origins))
        for error in exc.errors():
            nested = (error.get("ctx") or {}).get("error")
            if isinstance(nested, ConfigError):  # the cross-checks: already one line each
                problems.extend(nested.problems)
            else:
                problems.append(_format_error(error, labels=labels, origins=origins))
        raise ConfigError([_with_origin(line, origins)
                           for line in dict.fromkeys(problems)]) from None
    finally:
        _ONLY_TARGETS.reset(token)
    if problems:
        raise ConfigError(problems)
    return settings


def _environment(data: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The settings the ``OUTAGEWATCH_*`` variables give, as ``{"defaults.threshold":
    "OUTAGEWATCH_DEFAULTS__THRESHOLD"}``, and one problem per variable that looks like a
    setting but names no section (pydantic-settings would ignore it). Variables that are no
    settings (OUTAGEWATCH_CONFIG, _URL, _TOKEN, a password named by a ``*_env`` key) pass."""
    sections = list(Settings.model_fields)
    named = set(_named_variables(data))
    origins: dict[str, str] = {}
    problems: list[str] = []
    for variable in sorted(os.environ):
        if not variable.upper().startswith(configerrors.ENV_PREFIX) or variable in named:
            continue
        parts = variable[len(configerrors.ENV_PREFIX):].lower().split("__")
        if parts[0] in sections:
            origins[".".join(parts)] = variable
            continue
        near = configerrors.did_you_mean(parts[0], sections)
        looks_like_json = os.environ[variable].lstrip()[:1] in {"{", "["}
        if len(parts) < 2 and not (near and looks_like_json):
            continue  # not written as a setting: someone else's variable
        hint = (f"did you mean {configerrors.ENV_PREFIX}{near.upper()}"
                f"{variable[len(configerrors.ENV_PREFIX) + len(parts[0]):]}?" if near else
                f"sections: {', '.join(sections)}")
        problems.append(f"{variable} (environment): no section {parts[0]!r}; {hint}")
    return origins, problems


def _named_variables(data: object) -> list[str]:
    """Every variable a ``*_env`` key of the file names (a secret, not a setting)."""
    if isinstance(data, dict):
        return [str(v) for k, v in data.items() if str(k).endswith("_env")] + [
            n for v in data.values() for n in _named_variables(v)]
    if isinstance(data, list):
        return [n for v in data for n in _named_variables(v)]
    return []


def _targets_as_given(data: Mapping[str, Any], origins: Mapping[str, str]) -> object:
    """The targets as the operator wrote them: the file's, or a whole list from the
    environment (OUTAGEWATCH_TARGETS='[...]')."""
    variable = origins.get("targets")
    if variable is not None:
        try:
            return json.loads(os.environ.get(variable, ""))
        except ValueError:
            return None
    return data.get("targets")


def _with_origin(line: str, origins: Mapping[str, str]) -> str:
    """``defaults.threshold: ...`` -> ``defaults.threshold (from OUTAGEWATCH_...): ...`` when
    the environment gave that value (or the section or list it is part of)."""
    path, sep, rest = line.partition(": ")
    for where, variable in origins.items():
        if path == where or path.startswith((f"{where}.", f"{where}[")):
            return f"{path} (from {variable}){sep}{rest}"
    return line


def _read(path: Path) -> dict[str, Any]:
    """The file's sections, or ConfigError: missing, too large, unreadable, not YAML."""
    where = str(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError([(f"{where}: larger than {MAX_CONFIG_BYTES // 2**20} MiB: "
                               "not a configuration")])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{where}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{where}: cannot read: {exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except ValueError as exc:  # a date that does not exist: 2026-13-01
        raise ConfigError([f"{where}: invalid YAML: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}{pos}: invalid YAML: {reason}"]) from None
    if data is None:
        raise ConfigError([f"{where}: file is empty"])
    if not isinstance(data, dict):
        raise ConfigError([f"{where}: expected a mapping of sections at the top level"])
    return data


_SETTINGS_FIELD = re.compile(r'field "([a-z_]+)"')
_TAGS = frozenset(t.value for t in ProbeType)


def _format_error(error: Mapping[str, Any], *, labels: Mapping[int, str],
                  origins: Mapping[str, str]) -> str:
    loc = list(error.get("loc", ()))
    path = configerrors.path_of(loc, labels, _TAGS)
    kind = error.get("type", "")
    if kind in {"union_tag_invalid", "union_tag_not_found"}:
        path += ".type"
    msg = configerrors.describe(error, root=Settings, tags=_TAGS)
    variable = origins.get(path)
    if kind == "extra_forbidden" and variable is not None and "did you mean " in msg:
        near = msg.rsplit("did you mean ", 1)[1].rstrip("?")
        msg = f"unknown key; did you mean {variable.rsplit('__', 1)[0]}__{near.upper()}?"
    key = _KEY_PREFIX.match(msg)
    if key:  # a model-level check that names its key: "password_file: ..." -> path.password_file
        path, msg = f"{path}.{key.group(1)}", key.group(2)
    return f"{path}: {msg}"


_KEY_PREFIX = re.compile(r"^([a-z_]+): (.+)$", re.DOTALL)
