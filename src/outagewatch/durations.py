"""Parse human durations: ``30s``, ``15m``, ``1h30m``, ``500ms``, ISO 8601, plain seconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from pydantic import TypeAdapter, ValidationError

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_COMPOUND = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_TIMEDELTA = TypeAdapter(timedelta)


def parse_duration(value: object) -> timedelta:
    """Return a positive timedelta or raise ValueError with a message for the user."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m, 1h30m or 500ms")  # noqa: TRY004 - pydantic wants ValueError
    elif isinstance(value, int | float):
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        result = _parse_text(value.strip())
    else:
        raise ValueError("expected a duration such as 30s, 15m, 1h30m or 500ms")  # noqa: TRY004 - pydantic wants ValueError
    if result <= timedelta(0):
        raise ValueError("duration must be greater than zero")
    return result


def _parse_text(text: str) -> timedelta:
    if text.startswith("-") and _parse_text(text[1:]) >= timedelta(0):
        return -_parse_text(text[1:])
    if _NUMBER.fullmatch(text):
        return timedelta(seconds=float(text))
    if _COMPOUND.fullmatch(text):
        return timedelta(
            seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
        )
    if text.upper().startswith(("P", "-P")):
        try:
            return _TIMEDELTA.validate_python(text)
        except ValidationError:
            pass
    raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 15m, 1h30m, 500ms or PT15M")


def format_duration(seconds: float) -> str:
    """Render seconds compactly, the inverse of parse_duration for whole units."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    total = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_moment(text: str, *, now: datetime, future: bool = True) -> datetime:
    """A moment an operator gives: ISO 8601 with a zone (``2026-12-16T03:00:00+01:00``,
    ``...Z``), or relative to ``now``: ``+2h``, ``90m``, ``1h30m`` (later), ``-30m``
    (earlier). ``future``: it must lie ahead (an ETR); otherwise it must not (a start)."""
    text = text.strip()
    relative = text.removeprefix("+")
    if relative and (relative[0].isdigit() or relative.startswith("-")) and \
            _COMPOUND.fullmatch(relative.removeprefix("-")):
        try:
            moment = now + _parse_text(relative)
        except OverflowError:
            raise ValueError(f"{text!r} is too far from now") from None
    else:
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ValueError(f"{text!r} is neither a time such as 2026-12-16T03:00:00+01:00 "
                             "nor a relative one such as +2h or 90m") from None
        if moment.tzinfo is None:
            raise ValueError(f"{text!r} has no time zone: add one, e.g. Z or +01:00")
    if future and moment <= now:
        raise ValueError(f"{text!r} is in the past ({moment.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
                         f"); give a time ahead, e.g. +2h")
    if not future and moment > now:
        raise ValueError(f"{text!r} is in the future")
    return moment
