"""The change feed: one tailer of the database's change log per process, fanned out to
subscribers (Events streams, result watchers).

A subscriber registers first, then reads the log position, then takes its snapshot: every
change after that position reaches it, nothing before it is duplicated (DESIGN §3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import IntEnum

from pyarmonik.aio import cancel_and_wait
from pyarmonik.domain.records import Row
from pyarmonik.storage.database import Database

log = logging.getLogger(__name__)


class ChangeKind(IntEnum):
    """The kinds of change-log entries; numbered as the Events API's EventsEnum."""

    NEW_TASK = 1
    TASK_STATUS = 2
    NEW_RESULT = 3
    RESULT_STATUS = 4
    RESULT_OWNER = 5


@dataclass(frozen=True)
class Change:
    seq: int
    session_id: str
    kind: ChangeKind
    entity_id: str
    status: int
    previous_owner: str
    current_owner: str

    @staticmethod
    def from_row(row: Row) -> Change:
        return Change(
            seq=int(row["seq"]),
            session_id=row["session_id"],
            kind=ChangeKind(row["kind"]),
            entity_id=row["entity_id"],
            status=int(row["status"]),
            previous_owner=row["previous_owner"],
            current_owner=row["current_owner"],
        )


class Subscription:
    """Changes of one session (or of every session when session_id is empty)."""

    def __init__(self, feed: ChangeFeed, session_id: str):
        self.feed = feed
        self.session_id = session_id
        self.after = 0
        self._inbox: asyncio.Queue[list[Change]] = asyncio.Queue()

    def deliver(self, changes: list[Change]) -> None:
        self._inbox.put_nowait(changes)

    async def batches(self) -> AsyncIterator[list[Change]]:
        """Batches of changes after the subscription's start, forever, each change once."""
        while True:
            batch = [c for c in await self._inbox.get() if c.seq > self.after]
            if batch:
                self.after = batch[-1].seq
                yield batch

    def close(self) -> None:
        self.feed._subscribers.discard(self)


class ChangeFeed:
    """Tails the change log when the database reports a commit (PostgreSQL's NOTIFY,
    SQLite's wake-ups between processes); `poll_interval` only bounds the wait for a
    notification that got lost."""

    def __init__(self, database: Database, poll_interval: float = 1.0):
        self.database = database
        self.poll_interval = poll_interval
        self._subscribers: set[Subscription] = set()
        # While nobody subscribes the log is not read at all (most of a busy cluster's
        # commits would cost a query each): the first subscriber's position restarts it.
        self._cursor: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._tail(), name="change-feed")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def subscribe(self, session_id: str) -> Subscription:
        """Register a subscriber; its `after` is the log position its snapshot must follow."""
        subscription = Subscription(self, session_id)
        self._subscribers.add(subscription)
        try:
            async with self.database.read() as repository:
                subscription.after = await repository.last_change()
        except BaseException:  # e.g. the database is down: no subscriber left behind
            subscription.close()
            raise
        # Reading from the earliest position anyone needs: subscribers skip what they had.
        if self._cursor is None or subscription.after < self._cursor:
            self._cursor = subscription.after
        return subscription

    async def _tail(self) -> None:
        while True:
            try:
                await self.database.wait_for_changes(self.poll_interval)
                await self._read_new()
            except asyncio.CancelledError:
                raise
            except Exception:  # a backend hiccup must not end the feed; retry soon
                log.exception("change feed: reading the change log failed")
                await asyncio.sleep(1.0)

    async def _read_new(self) -> None:
        if not self._subscribers:
            self._cursor = None
            return
        if self._cursor is None:  # the subscribers are still reading their positions
            return
        async with self.database.read() as repository:
            while True:
                rows = await repository.changes_after(self._cursor)
                if not rows:
                    return
                changes = [Change.from_row(row) for row in rows]
                self._cursor = changes[-1].seq
                by_session: dict[str, list[Change]] = {}
                for change in changes:
                    by_session.setdefault(change.session_id, []).append(change)
                for subscriber in list(self._subscribers):
                    if not subscriber.session_id:
                        subscriber.deliver(changes)
                    elif subscriber.session_id in by_session:
                        subscriber.deliver(by_session[subscriber.session_id])
