"""Per test an empty database on the session's PostgreSQL server (``postgres``, in
tests/conftest.py): the PostgreSQL store's tests run against the real thing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.helpers.postgres import Postgres


@pytest.fixture(name="pg")
def _pg(postgres: Postgres) -> Postgres:
    """The session's server, its app database emptied (about 10 ms)."""
    postgres.reset()
    return postgres
