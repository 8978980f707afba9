"""WatchResults, which ArmoniK declares but never implemented; our semantics:

Each request adds `result_ids` to the watch. The server answers at once, for the results
whose current status is in `fetch_statuses`, one message per status (unknown ids are
reported as NOTFOUND); then, whenever a watched result reaches a status in
`watch_statuses`, it sends {status, [ids]}. Once the client has half-closed and no watched
result can change any more (all COMPLETED, ABORTED or DELETED), the stream ends, after every
reply owed. An unknown status or an empty id is INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from armonik.protogen.common import results_common_pb2 as pb

from pyarmonik.aio import cancel_and_wait
from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.domain.records import Result
from pyarmonik.domain.statuses import ResultStatus
from pyarmonik.scheduling.changes import ChangeFeed, ChangeKind
from pyarmonik.storage.database import Database

SETTLED = frozenset({ResultStatus.COMPLETED, ResultStatus.ABORTED, ResultStatus.DELETED})


def _statuses(values: object) -> set[int]:
    known = {int(s) for s in ResultStatus}
    found = {int(v) for v in values}  # type: ignore[attr-defined]
    if found - known:
        raise InvalidArgument(f"unknown result statuses: {sorted(found - known)}")
    return found


class _WatchState:
    """What one WatchResults call watches, and the replies it owes.

    Result statuses only grow (CREATED 1 -> COMPLETED 2 | ABORTED 3 -> DELETED 4), so a
    change is news only when it is above the status last known; this makes a change seen
    both in a database read and in the change feed count once.
    """

    def __init__(self) -> None:
        self.watched: dict[str, set[int]] = {}  # result id -> statuses to report
        self.current: dict[str, int] = {}
        # Ids whose first read is in flight -> statuses the feed announced meanwhile.
        self.loading: dict[str, list[int]] = {}
        self.replies: asyncio.Queue[tuple[int, list[str]] | None] = asyncio.Queue()
        self.closed = False  # the client half-closed: no request will come
        self.failure: Exception | None = None

    def send(self, by_status: dict[int, list[str]]) -> None:
        for status, group in by_status.items():
            self.replies.put_nowait((status, group))

    def start_loading(self, ids: list[str]) -> list[str]:
        """Mark the ids not watched yet as loading; return them."""
        new = [i for i in ids if i not in self.watched and i not in self.loading]
        for result_id in new:
            self.loading[result_id] = []
        return new

    def loaded(
        self, ids: list[str], new: set[str], found: dict[str, int], fetch: set[int], watch: set[int]
    ) -> None:
        """Answer a request from its database read (`found`: id -> status)."""
        fetched: dict[int, list[str]] = {}
        later: dict[int, list[str]] = {}
        for result_id in ids:
            status = found.get(result_id, int(ResultStatus.NOTFOUND))
            if status in fetch or status == ResultStatus.NOTFOUND:
                fetched.setdefault(status, []).append(result_id)
            seen = self.loading.pop(result_id, []) if result_id in new else []
            if result_id not in found:
                continue
            statuses = self.watched.setdefault(result_id, set())
            statuses.update(watch)
            if result_id in new:
                self.current[result_id] = max([status, *seen])
                # Changes announced during the read that it did not see yet.
                for changed in sorted(set(seen)):
                    if changed > status and changed in statuses:
                        later.setdefault(changed, []).append(result_id)
        self.send(fetched)
        self.send(later)

    def changed(self, result_id: str, status: int, by_status: dict[int, list[str]]) -> None:
        """A status change from the feed."""
        if result_id in self.loading:
            self.loading[result_id].append(status)
        elif result_id in self.watched and status > self.current.get(result_id, 0):
            self.current[result_id] = status
            if status in self.watched[result_id]:
                by_status.setdefault(status, []).append(result_id)

    def finished(self) -> bool:
        return (
            self.closed
            and not self.loading
            and all(self.current.get(r, 0) in SETTLED for r in self.watched)
        )


class ResultWatcher:
    def __init__(self, database: Database, feed: ChangeFeed):
        self.database = database
        self.feed = feed

    async def watch(
        self, requests: AsyncIterator[pb.WatchResultRequest]
    ) -> AsyncIterator[tuple[int, list[str]]]:
        # Subscribed before any read: a change after a read is always announced.
        subscription = await self.feed.subscribe("")
        state = _WatchState()

        async def read_requests() -> None:
            try:
                async for request in requests:
                    fetch = _statuses(request.fetch_statuses)
                    watch = _statuses(request.watch_statuses)
                    ids = list(dict.fromkeys(request.result_ids))
                    if not all(ids):
                        raise InvalidArgument("result ids must not be empty")
                    new = set(state.start_loading(ids))
                    async with self.database.read() as repository:
                        found = {
                            r.result_id: int(r.status)
                            for r in await repository.find(Result, {"result_id": ids})
                        }
                    state.loaded(ids, new, found, fetch, watch)
                state.closed = True
            except Exception as error:  # reported to the client by the writer below
                state.failure = error
            state.replies.put_nowait(None)  # wake the writer: it may be finished

        async def follow_changes() -> None:
            try:
                async for batch in subscription.batches():
                    by_status: dict[int, list[str]] = {}
                    for change in batch:
                        if change.kind is ChangeKind.RESULT_STATUS:
                            state.changed(change.entity_id, change.status, by_status)
                    state.send(by_status)
                    state.replies.put_nowait(None)
            except Exception as error:
                state.failure = error
                state.replies.put_nowait(None)

        # The two readers only talk to this writer through the replies queue, where None
        # means "look at the state": finished, or failed.
        workers = [asyncio.create_task(read_requests()), asyncio.create_task(follow_changes())]
        try:
            while not state.finished():
                reply = await state.replies.get()
                if reply is not None:
                    yield reply
                elif state.failure is not None:
                    raise state.failure
            # Finished: the replies still queued are owed to the client all the same.
            while not state.replies.empty():
                reply = state.replies.get_nowait()
                if reply is not None:
                    yield reply
        finally:
            subscription.close()
            for worker in workers:
                with contextlib.suppress(Exception):
                    await cancel_and_wait(worker)
