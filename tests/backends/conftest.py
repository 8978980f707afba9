"""Fixtures of the backend contract suites: every test runs on SQLite and on PostgreSQL.

PostgreSQL tests use a fresh schema of the server at `postgres_url()` and drop it afterwards.
When the server is unreachable they are skipped, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from pyarmonik.storage.database import Database
from pyarmonik.storage.database.postgres import PostgresDatabase, redact
from pyarmonik.storage.database.sqlite import SqliteDatabase

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url() -> str:
    """The PostgreSQL server of the tests (PYARMONIK_TEST_POSTGRES_URL overrides it)."""
    return os.environ.get("PYARMONIK_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


_reachable: dict[str, str | None] = {}


async def require_postgres() -> str:
    """postgres_url(), or skip the test (fail it in CI) when the server cannot be reached."""
    url = postgres_url()
    if url not in _reachable:
        try:
            connection = await asyncpg.connect(url, timeout=5)
            await connection.close()
            _reachable[url] = None
        except (OSError, TimeoutError, asyncpg.PostgresError) as error:
            _reachable[url] = f"{type(error).__name__}: {error}"
    problem = _reachable[url]
    if problem is not None:
        reason = f"PostgreSQL unreachable at {redact(url)} ({problem})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A URL naming a fresh PostgreSQL schema, dropped with everything in it on exit."""
    url = await require_postgres()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{url}{'&' if '?' in url else '?'}schema={schema}"
    finally:
        connection = await asyncpg.connect(url, timeout=5)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()


@dataclass
class Backend:
    """One database store; `open()` starts another Database instance on it."""

    name: str
    make: Callable[[], Database]
    opened: list[Database] = field(default_factory=list)

    async def open(self) -> Database:
        database = self.make()
        await database.start()
        self.opened.append(database)
        return database

    async def close(self) -> None:
        for database in reversed(self.opened):
            await database.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "pyarmonik.db"
        store = Backend("sqlite", lambda: SqliteDatabase(path))
        try:
            yield store
        finally:
            await store.close()
        return
    async with postgres_schema() as url:
        store = Backend("postgres", lambda: PostgresDatabase(url, max_size=5))
        try:
            yield store
        finally:
            await store.close()


@pytest.fixture
async def database(backend: Backend) -> Database:
    """A started database on a fresh store (closed by the `backend` fixture)."""
    return await backend.open()
