"""Validation errors as an operator reads them: one line each, in our words, with an example.

pydantic reports ``('targets', 6, 'imap', 'password_env')`` and "Input should be a valid
list"; the operator wrote ``targets: [...]`` with a target named ``imap-eu``. Here a location
becomes ``targets[imap-eu].password_env``, a value that came from an ``OUTAGEWATCH_*``
variable says so, an unknown key gets the nearest known one, and each error type pydantic
produces for our models gets its own sentence. Nothing here reads the file or the
environment: the caller passes what it read.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections import Counter
from typing import TYPE_CHECKING, Any, Union

from pydantic import BaseModel

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ENV_PREFIX = "OUTAGEWATCH_"
NAME_PATTERN = r"^[a-z0-9_.-]+$"
NODE_PATTERN = r"^[A-Za-z0-9_.-]{1,63}$"
_SECRETS = frozenset({"password", "token", "read_token"})  # never echo what was written there

# What a key holds, by its place ("[]" for any list index, "<name>" for any mapping key):
# the noun for "expected ..." and an example of the right shape.
_SHAPES: Mapping[str, tuple[str, str]] = {
    "targets": ("a list of targets",
                ('"targets: [{name: imap-eu, platform: eu, type: imap, host: imap.example.com, '
                'username: probe}]"')),
    "targets[]": ("a target (key: value pairs)",
                  ('"- {name: imap-eu, platform: eu, type: imap, host: imap.example.com, '
                  'username: probe}"')),
    "platforms": ("a mapping of platforms by name",
                  '"platforms: {eu: {incident_recipients: [noc@example.com]}}"'),
    "platforms.<name>": ("a platform (key: value pairs)",
                         ('"eu: {incident_recipients: [noc@example.com], '
                         'info_recipients: [info@example.com]}"')),
    "platforms.<name>.incident_recipients": ("a list of e-mail addresses",
                                             '"incident_recipients: [noc@example.com]"'),
    "platforms.<name>.info_recipients": ("a list of e-mail addresses",
                                         '"info_recipients: [info@example.com]"'),
    "platforms.<name>.calendar": ("a calendar (key: value pairs)",
                                  '"calendar: {country: DE, timezone: Europe/Berlin}"'),
    "platforms.<name>.calendar.closures": ("a list of dates", '"closures: [2026-12-24]"'),
    "targets[].expect_status": ("a list of HTTP status codes", '"expect_status: [200, 302]"'),
    "targets[].locations": ("a list of location names", '"locations: [fra, ams]"'),
    "server": ("a section (key: value pairs)", '"server: {listen: 127.0.0.1:9817}"'),
    "defaults": ("a section (key: value pairs)", '"defaults: {interval: 60s, window: 15m}"'),
    "engine": ("a section (key: value pairs)", '"engine: {max_in_flight: 512}"'),
    "notify": ("a section (key: value pairs)",
               "\"notify: {smtp: {host: relay.example.com}, sender: 'NOC <noc@example.com>'}\""),
    "notify.smtp": ("a relay (key: value pairs)",
                    '"smtp: {host: relay.example.com, port: 587}"'),
    "maintenance": ("a section (key: value pairs)",
                    '"maintenance: {notice_days: 3, windows: [...]}"'),
    "maintenance.windows": ("a list of maintenance windows",
                            ('"windows: [{id: eu-upgrade, platform: eu, '
                            "start: '2026-12-28T22:00:00+01:00', "
                            "end: '2026-12-29T02:00:00+01:00'}]\"")),
    "maintenance.windows[]": ("a window (key: value pairs)",
                              ('"- {id: eu-upgrade, platform: eu, '
                              "start: '2026-12-28T22:00:00+01:00', "
                              "end: '2026-12-29T02:00:00+01:00'}\"")),
    "maintenance.windows[].targets": ("a list of target names",
                                      '"targets: [imap-eu, pop3-eu]"'),
    "state": ("a section (key: value pairs)", '"state: {path: /var/lib/outagewatch/state.db}"'),
    "cluster": ("a section (key: value pairs)", '"cluster: {locations: [fra, ams, nyc]}"'),
    "cluster.locations": ("a list of location names", '"locations: [fra, ams, nyc]"'),
}

# A few values as they are written, for "required key is missing" and whole numbers.
_EXAMPLES: Mapping[str, str] = {
    "notify.smtp.host": "relay.example.com", "name": "imap-eu", "platform": "eu",
    "type": "imap", "url": "https://webmail.example.com/",
    "host": "imap.example.com", "username": "probe@example.com",
    "sender": "'NOC <noc@example.com>'", "smtp": "{host: relay.example.com}",
    "id": "eu-upgrade", "start": "'2026-12-28T22:00:00+01:00'",
    "end": "'2026-12-29T02:00:00+01:00'", "port": "993", "recover_after": "2",
    "max_redirects": "5", "max_in_flight": "512", "pop3_threads": "32", "notice_days": "3",
    "quorum": "2", "expect_status": "200", "mailbox": "INBOX", "location": "fra",
    "locations": "fra", "node": "fra-1", "platforms": "eu", "state.path":
    "/var/lib/outagewatch/state.db", "templates": "/etc/outagewatch/templates",
    "ca_file": "/etc/ssl/private-ca.pem", "sslrootcert": "/etc/ssl/db-ca.pem",
    "password_file": "/run/secrets/imap-probe", "token_file": "/run/secrets/outagewatch-token",
    "read_token_file": "/run/secrets/outagewatch-read-token",
}

_PATTERNS: Mapping[str, str] = {
    NAME_PATTERN: "lower-case letters, digits, '.', '_' and '-' only",
    NODE_PATTERN: "1 to 63 letters, digits, '.', '_' or '-'",
}


def target_labels(entries: object) -> dict[int, str]:
    """How each target is named in messages: by its name when it has a usable one (valid and
    not shared with another target), else by its index."""
    if not isinstance(entries, list):
        return {}
    names = [e.get("name") if isinstance(e, dict) else None for e in entries]
    counts = Counter(n for n in names if isinstance(n, str))
    labels = {}
    for index, name in enumerate(names):
        usable = (isinstance(name, str) and re.match(NAME_PATTERN, name) is not None
                  and counts[name] == 1)
        labels[index] = str(name) if usable else str(index)
    return labels


def path_of(loc: Sequence[Any], labels: Mapping[int, str], tags: frozenset[str]) -> str:
    """``('targets', 6, 'imap', 'password_env')`` -> ``targets[imap-eu].password_env``."""
    parts: list[str] = []
    for i, item in enumerate(loc):
        if item == "[key]":
            continue  # a mapping's key that failed: the path up to it names it
        if isinstance(item, int):
            label = labels.get(item, str(item)) if i == 1 and loc[0] == "targets" else str(item)
            parts.append(f"[{label}]")
        elif item in tags and i == 2 and loc[0] == "targets" and isinstance(loc[1], int):
            continue  # the discriminated union's tag, not a key the user wrote
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "config"


def _shape_key(loc: Sequence[Any], tags: frozenset[str]) -> str:
    """The place of ``loc`` in the model: indexes as ``[]``, platform names as ``<name>``."""
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append("[]")
        elif item in tags and i == 2 and loc[0] == "targets":
            continue
        elif i == 1 and loc[0] == "platforms":
            parts.append(".<name>")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _field_name(loc: Sequence[Any]) -> str:
    names = [item for item in loc if isinstance(item, str) and item != "[key]"]
    return names[-1] if names else ""


def _shown(value: object) -> str:
    """A wrong value as the operator wrote it, in a few words."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    text = str(value)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def known_fields(root: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys a model accepts at ``loc`` (the pydantic location of the mapping that holds
    them), walking lists, mappings and the targets' union by its tag; [] if unknown."""
    annotation: Any = root
    for item in loc:
        annotation = _step(annotation, item)
        if annotation is None:
            return []
    models = _models(annotation)
    if len(models) != 1:
        return []
    return [name for name, field in models[0].model_fields.items() if not field.exclude]


def _members(annotation: Any) -> list[Any]:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in {Union, types.UnionType}:
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def _models(annotation: Any) -> list[type[BaseModel]]:
    return [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]


def _step(annotation: Any, item: object) -> Any:
    """One step of a location: a model's key, a list's index, a mapping's key, or the tag
    that picks a member of the targets' union."""
    models = _models(annotation)
    if len(models) == 1 and isinstance(item, str) and item in models[0].model_fields:
        return models[0].model_fields[item].annotation
    for model in models if len(models) > 1 else []:
        kind = model.model_fields.get("type")
        if kind is not None and item in typing.get_args(_members(kind.annotation)[0]):
            return model
    for member in _members(annotation):
        origin = typing.get_origin(member)
        if origin is list and isinstance(item, int):
            return typing.get_args(member)[0]
        if origin is dict:
            return typing.get_args(member)[1]
    return None


def did_you_mean(key: object, known: Sequence[str]) -> str | None:
    if not isinstance(key, str):
        return None
    found = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def describe(error: Mapping[str, Any], *, root: type[BaseModel],  # noqa: C901, PLR0911, PLR0912 - one case per error type
             tags: frozenset[str]) -> str:
    """One pydantic error in our words, without the location."""
    loc = list(error.get("loc", ()))
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if loc and loc[-1] == "[key]":  # a mapping's key: speak of the mapping
        loc = loc[:-2]
        ctx = {**ctx, "key": True}
    field = _field_name(loc)
    secret = field in _SECRETS
    value = error.get("input")
    shown = "what was given" if secret else _shown(value)
    shape = _shape_key(loc, tags)
    noun, example = _SHAPES.get(shape, ("", ""))
    sample = _EXAMPLES.get(shape, _EXAMPLES.get(field))
    like = f", e.g. {example}" if example else ""
    if kind == "extra_forbidden":
        near = did_you_mean(loc[-1], known_fields(root, loc[:-1])) if loc else None
        return f"unknown key; did you mean {near}?" if near else "unknown key"
    if kind == "missing":
        if example:
            return f"required key is missing{like}"
        return f"required key is missing (e.g. {field}: {sample})" if sample else \
            "required key is missing"
    if kind in {"list_type", "dict_type", "model_type", "model_attributes_type"}:
        if value is None:
            return (f"is empty: give its keys, or {{}} for the defaults{like}"
                    if kind != "list_type" else f"is empty: expected {noun or 'a list'}{like}")
        what = noun or ("a list" if kind == "list_type" else "key: value pairs")
        return f"expected {what}{like}, not {shown}"
    if kind == "too_short":
        what = noun or "a list"
        return f"must not be empty: expected {what} with at least one entry{like}"
    if kind == "string_type":
        if isinstance(value, int | float) and not isinstance(value, bool) and not secret:
            return f'expected text, not {shown}: put it in quotes ("{value}")'
        return f"expected text, not {shown}"
    if kind == "string_pattern_mismatch":
        rule = _PATTERNS.get(str(ctx.get("pattern")), f"text matching {ctx.get('pattern')}")
        what = "the name must be" if ctx.get("key") else "must be"
        return f"{what} {rule}, e.g. {sample or 'imap-eu'}; not {shown}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"expected a whole number, e.g. {sample or '3'}, not {shown}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, not {shown}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}, not {shown}"
    if kind in {"bool_type", "bool_parsing"}:
        return f"expected true or false, not {shown}"
    if kind == "literal_error":
        options = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"must be one of {options}; not {shown}"
    if kind == "timezone_aware":
        return (f"needs a time zone, e.g. 2026-12-28T22:00:00+01:00 or "
                f"2026-12-28T21:00:00Z; not {shown}")
    if kind.startswith("datetime_"):
        return (f"expected a date and time with a time zone, e.g. 2026-12-28T22:00:00+01:00; "
                f"not {shown}")
    if kind.startswith("date_"):
        return f"expected a date, e.g. 2026-12-24; not {shown}"
    if kind == "path_type":
        return f"expected a file path, e.g. {sample or '/path/to/file'}; not {shown}"
    if kind == "union_tag_invalid":
        return f"must be one of {', '.join(sorted(tags))}; not {ctx.get('tag', '')!r}"
    if kind == "union_tag_not_found":
        return f"required key is missing (one of {', '.join(sorted(tags))})"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return " ".join(message.split())  # one line, whatever a validator wrote
