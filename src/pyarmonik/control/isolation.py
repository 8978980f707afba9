"""Session isolation (beyond ArmoniK): with `session_isolation` on, a caller sees and touches
only the sessions it created, with their tasks and results, unless it holds
`General:AllSessions`. Everything else answers as if it did not exist (NOT_FOUND, absent from
lists): a user learns nothing of another's work, not even that it exists."""

from __future__ import annotations

from dataclasses import replace

from pyarmonik.config import Settings
from pyarmonik.control.auth import current_identity
from pyarmonik.domain.auth import ALL_SESSIONS
from pyarmonik.domain.errors import NotFound
from pyarmonik.domain.filters import MATCH_ALL, Condition, Filter, Kind, ListQuery, Op, and_filters
from pyarmonik.domain.records import Result, Session, Task
from pyarmonik.scheduling.backends import Backends


class SessionGuard:
    def __init__(self, settings: Settings, backends: Backends):
        self.enabled = settings.session_isolation
        self.authenticated = settings.require_authentication
        self.backends = backends

    def creator(self) -> str:
        """The name to record as a new session's creator ('' without authentication)."""
        return current_identity().username if self.authenticated else ""

    def _user(self) -> str | None:
        """The user the current call is confined to; None when it sees everything."""
        if not (self.enabled and self.authenticated):  # nobody to isolate from anybody
            return None
        identity = current_identity()
        return None if identity.holds(ALL_SESSIONS) else identity.username

    def sessions(self, query: ListQuery) -> ListQuery:
        """`query` on the sessions table, narrowed to the caller's sessions."""
        user = self._user()
        scope: Filter = (
            MATCH_ALL
            if user is None
            else ((Condition("created_by_user", Kind.STRING, Op.EQ, user),),)
        )
        return replace(query, filter=and_filters(query.filter, scope))

    def scope(self) -> Filter:
        """A filter on a table with a `session_id` column: the caller's sessions only."""
        user = self._user()
        if user is None:
            return MATCH_ALL
        return ((Condition("session_id", Kind.SESSION_OWNER, Op.EQ, user),),)

    def within(self, query: ListQuery) -> ListQuery:
        """`query` on tasks or results, narrowed to the caller's sessions."""
        return replace(query, filter=and_filters(query.filter, self.scope()))

    async def session(self, session_id: str) -> None:
        """NotFound unless the caller may see this session (unknown ids are left to the
        service, which answers them as usual)."""
        await self.sessions_of([session_id], "Session")

    async def tasks(self, task_ids: list[str]) -> None:
        await self._records(Task, task_ids, "Task")

    async def results(self, result_ids: list[str]) -> None:
        await self._records(Result, result_ids, "Result")

    async def _records(self, kind: type[Task] | type[Result], keys: list[str], name: str) -> None:
        if self._user() is None or not any(keys):
            return
        async with self.backends.database.read() as repository:
            records = await repository.find(kind, {kind.KEY: [k for k in keys if k]})
        await self.sessions_of(
            [r.session_id for r in records],
            name,
            {r.session_id: getattr(r, kind.KEY) for r in records},
        )

    async def sessions_of(
        self, session_ids: list[str], name: str, shown: dict[str, str] | None = None
    ) -> None:
        """NotFound naming the first of `session_ids` the caller may not see (or the record
        `shown` for it)."""
        user = self._user()
        wanted = [i for i in dict.fromkeys(session_ids) if i]
        if user is None or not wanted:
            return
        async with self.backends.database.read() as repository:
            sessions = await repository.find(Session, {"session_id": wanted})
        for session in sessions:
            if session.created_by_user != user:
                key = (shown or {}).get(session.session_id, session.session_id)
                raise NotFound(f"{name} {key} not found")
