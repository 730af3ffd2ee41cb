"""Targets for tests, validated as the configuration file's would be."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from outagewatch.config import Target

_TARGET: TypeAdapter[Any] = TypeAdapter(Target)


def make_target(**fields: Any) -> Any:
    """A validated target from config-file style fields, with short test defaults."""
    fields.setdefault("platform", "eu")
    fields.setdefault("name", f"{fields['type']}-test")
    return _TARGET.validate_python(fields)
