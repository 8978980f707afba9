"""Session isolation (beyond ArmoniK): with `session_isolation` on, a caller sees and touches
only the sessions it created, with their tasks and results, unless it holds
`General:AllSessions`. Everything else answers as if it did not exist (NOT_FOUND, absent from
lists): a user learns nothing of another's work, not even that it exists."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pyarmonik.config import Settings
from pyarmonik.control.auth import current_identity
from pyarmonik.domain.auth import ALL_SESSIONS, Identity
from pyarmonik.domain.errors import NotFound
from pyarmonik.domain.filters import MATCH_ALL, Condition, Filter, Kind, ListQuery, Op, and_filters
from pyarmonik.domain.records import Result, Session, Task
from pyarmonik.scheduling.backends import Backends


@dataclass(frozen=True)
class Visibility:
    """The sessions a caller may see: those created by `user`, or all (user None)."""

    user: str | None

    @staticmethod
    def of(identity: Identity, settings: Settings) -> Visibility:
        """What isolation lets `identity` see: everything when isolation is off, without
        authentication (sessions have no recorded creator then) or with General:AllSessions."""
        isolated = settings.session_isolation and settings.require_authentication
        if not isolated or identity.holds(ALL_SESSIONS):
            return Visibility(None)
        return Visibility(identity.username)

    def sessions(self, where: Filter) -> Filter:
        """`where` on the sessions table, narrowed to the visible sessions."""
        if self.user is None:
            return where
        return and_filters(where, ((Condition("created_by_user", Kind.STRING, Op.EQ, self.user),),))

    def within(self, where: Filter) -> Filter:
        """`where` on a table with a `session_id` column, narrowed to the visible sessions."""
        if self.user is None:
            return where
        return and_filters(
            where, ((Condition("session_id", Kind.SESSION_OWNER, Op.EQ, self.user),),)
        )

    def check(self, session_created_by: str, what: str) -> None:
        """NotFound (naming `what`) when the session is not visible: another user's session
        answers as an unknown one would."""
        if self.user is not None and session_created_by != self.user:
            raise NotFound(f"{what} not found")


class SessionGuard:
    """Isolation for the gRPC servicers, as the current call's identity sees it."""

    def __init__(self, settings: Settings, backends: Backends):
        self.settings = settings
        self.backends = backends

    def creator(self) -> str:
        """The name to record as a new session's creator ('' without authentication)."""
        return current_identity().username if self.settings.require_authentication else ""

    def _visible(self) -> Visibility:
        return Visibility.of(current_identity(), self.settings)

    def sessions(self, query: ListQuery) -> ListQuery:
        """`query` on the sessions table, narrowed to the caller's sessions."""
        return replace(query, filter=self._visible().sessions(query.filter))

    def scope(self) -> Filter:
        """A filter on a table with a `session_id` column: the caller's sessions only."""
        return self._visible().within(MATCH_ALL)

    def within(self, query: ListQuery) -> ListQuery:
        """`query` on tasks or results, narrowed to the caller's sessions."""
        return replace(query, filter=self._visible().within(query.filter))

    async def session(self, session_id: str) -> None:
        """NotFound unless the caller may see this session (unknown ids are left to the
        service, which answers them as usual)."""
        await self.sessions_of([session_id], "Session")

    async def tasks(self, task_ids: list[str]) -> None:
        await self._records(Task, task_ids, "Task")

    async def results(self, result_ids: list[str]) -> None:
        await self._records(Result, result_ids, "Result")

    async def _records(self, kind: type[Task] | type[Result], keys: list[str], name: str) -> None:
        if self._visible().user is None or not any(keys):
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
        visible = self._visible()
        wanted = [i for i in dict.fromkeys(session_ids) if i]
        if visible.user is None or not wanted:
            return
        async with self.backends.database.read() as repository:
            sessions = await repository.find(Session, {"session_id": wanted})
        for session in sessions:
            key = (shown or {}).get(session.session_id, session.session_id)
            visible.check(session.created_by_user, f"{name} {key}")
