"""The database port: the source of truth for sessions, tasks, results, partitions, and the
change log that the Events API tails.

Adapters (sqlite.py, postgres.py) only provide a connection that speaks SQL; every query
lives once in sql.py (`Repository`), written in the SQL both engines understand.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from pyarmonik.storage.database.sql import Repository, SqlConnection


class Database(Protocol):
    """A database adapter: opens connections and hands out repositories."""

    dialect: Any  # a domain.filters.SqlDialect

    async def start(self) -> None:
        """Connect and create or migrate the schema (idempotent, safe for concurrent starts)."""
        ...

    async def close(self) -> None: ...

    async def check_health(self) -> None:
        """Raise if the database cannot be used now."""
        ...

    def read(self) -> AbstractAsyncContextManager[Repository]:
        """A repository for reads (a consistent snapshot is not promised across calls)."""
        ...

    def write(self, announce: bool = True) -> AbstractAsyncContextManager[Repository]:
        """A repository inside one transaction, committed on normal exit, rolled back on error.
        `announce=False`: what it changes need not wake the processes waiting for changes."""
        ...

    async def wait_for_changes(self, timeout: float) -> None:
        """Return when the change log may have grown, or after `timeout` seconds."""
        ...


__all__ = ["Database", "Repository", "SqlConnection"]
