"""The cluster tests' database: on the session's PostgreSQL server (``postgres``, in
tests/conftest.py), one empty, migrated database per test."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from outagewatch.store.postgres import PostgresStore

if TYPE_CHECKING:
    from tests.helpers.postgres import Postgres

_numbers = itertools.count(1)


@dataclass
class Database:
    server: Postgres
    name: str

    @property
    def url(self) -> str:
        return f"postgresql://{self.server.user}@{self.server.host}:{self.server.port}/{self.name}"

    @property
    def password(self) -> str:
        return self.server.password

    async def connect(self, *, port: int | None = None) -> psycopg.AsyncConnection[Any]:
        """A connection of the application role (autocommit), optionally through a proxy."""
        return await psycopg.AsyncConnection.connect(
            host=self.server.host, port=port or self.server.port, dbname=self.name,
            user=self.server.user, password=self.server.password, autocommit=True,
            connect_timeout=5)

    def psql(self, sql: str) -> str:
        return self.server.psql(sql, dbname=self.name)


@pytest.fixture(name="db")
async def _db(postgres):
    pg_server = postgres
    name = f"t{os.getpid()}_{next(_numbers)}"
    pg_server.psql(f"CREATE DATABASE {name} OWNER {pg_server.user}")
    database = Database(pg_server, name)
    store = await PostgresStore.open(database.url, password=database.password)
    await store.close()  # migrated
    yield database
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
