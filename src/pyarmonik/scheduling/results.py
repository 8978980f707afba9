"""Results: metadata, data upload and download, deletion, import, ownership."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from typing import TypeVar

from pyarmonik.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from pyarmonik.domain.filters import ListQuery
from pyarmonik.domain.ids import new_id
from pyarmonik.domain.records import Result
from pyarmonik.domain.statuses import ResultStatus, SessionStatus
from pyarmonik.scheduling.backends import Backends, now
from pyarmonik.scheduling.graph import push_ready, push_ready_within, resolve
from pyarmonik.scheduling.sessions import load_session
from pyarmonik.storage.database import Repository
from pyarmonik.storage.objects import single_chunk
from pyarmonik.storage.objects.inline import InlineObjects

log = logging.getLogger(__name__)
T = TypeVar("T")

OPEN_SESSION = frozenset({SessionStatus.RUNNING, SessionStatus.PAUSED})


async def load_results(
    repository: Repository, session_id: str, result_ids: list[str]
) -> list[Result]:
    """The results with these ids in this session, in the given order; NOT_FOUND otherwise."""
    if not all(result_ids):
        raise InvalidArgument("result ids must not be empty")
    found = {r.result_id: r for r in await repository.find(Result, {"result_id": result_ids})}
    missing = [i for i in result_ids if i not in found or found[i].session_id != session_id]
    if missing:
        raise NotFound(f"Results not found in session {session_id}: {', '.join(missing[:10])}")
    return [found[i] for i in result_ids]


# The longest key an object store accepts (S3's limit).
MAX_OPAQUE_ID = 1024


def check_opaque_ids(opaque_ids: list[bytes]) -> None:
    """Refuse opaque ids that no adapter can have made: every adapter names its blobs with
    printable ASCII. (Adapters could fail on such keys, and that is no server error.)"""
    for opaque_id in opaque_ids:
        if not opaque_id or len(opaque_id) > MAX_OPAQUE_ID:
            raise InvalidArgument(f"opaque ids must hold 1 to {MAX_OPAQUE_ID} bytes")
        if not all(0x20 < byte < 0x7F for byte in opaque_id):
            raise InvalidArgument(f"opaque id {opaque_id!r} is not printable ASCII")


async def delete_unreferenced(backends: Backends, opaque_ids: list[bytes]) -> None:
    """Delete those of the blobs that no result refers to. A commit whose connection broke
    may have succeeded: when that cannot be checked, the blobs are kept (an orphan blob
    costs space, a deleted one would be lost data)."""
    if not opaque_ids:
        return
    try:
        async with backends.database.read() as repository:
            used = {r.opaque_id for r in await repository.find(Result, {"opaque_id": opaque_ids})}
        await backends.objects.delete([o for o in opaque_ids if o not in used])
    except Exception as error:
        log.warning("could not check whether %d stored blobs are used: %r", len(opaque_ids), error)


class ResultService:
    def __init__(self, backends: Backends, data_chunk_max_size: int):
        self.backends = backends
        self.data_chunk_max_size = data_chunk_max_size

    async def _open_session(self, repository: Repository, session_id: str) -> None:
        session = await load_session(repository, session_id)
        if session.status not in OPEN_SESSION:
            raise FailedPrecondition(f"Session {session_id} is {session.status.name}")

    async def create_metadata(
        self, session_id: str, entries: list[tuple[str, bool]], created_by: str = ""
    ) -> list[Result]:
        stamp = now()
        results = [
            Result(
                result_id=new_id(),
                session_id=session_id,
                name=name,
                manual_deletion=manual,
                created_by=created_by,
                created_at=stamp,
            )
            for name, manual in entries
        ]
        async with self.backends.database.write() as repository:
            await self._open_session(repository, session_id)
            await repository.insert(results)
        return results

    async def create_with_data(
        self, session_id: str, entries: list[tuple[str, bytes, bool]]
    ) -> list[Result]:
        async with self.backends.database.read() as repository:
            await self._open_session(repository, session_id)
        objects = self.backends.objects
        # Small data goes in the transaction that creates the results: one commit for all.
        inline = objects if isinstance(objects, InlineObjects) else None
        blobs: list[tuple[bytes, str, bytes]] = []
        stored: list[tuple[bytes, int]] = []
        try:
            for _, data, _ in entries:
                if inline is not None and inline.fits(len(data)):
                    blobs.append((inline.inline_id(), "", data))
                    stored.append((blobs[-1][0], len(data)))
                else:
                    stored.append(await objects.put(single_chunk(data)))
        except BaseException:  # the call cancelled or a store failing: keep nothing
            kept = [o for o, _ in stored if inline is None or not inline.is_inline(o)]
            await asyncio.shield(objects.delete(kept))
            raise
        stamp = now()
        results = [
            Result(
                result_id=new_id(),
                session_id=session_id,
                name=name,
                manual_deletion=manual,
                status=ResultStatus.COMPLETED,
                # ArmoniK records the session as the owner of client-created data.
                owner_task_id=session_id,
                opaque_id=opaque_id,
                size=size,
                created_at=stamp,
                completed_at=stamp,
            )
            for (name, _, manual), (opaque_id, size) in zip(entries, stored, strict=True)
        ]

        async def insert() -> list[Result]:
            async with self.backends.database.write() as repository:
                await self._open_session(repository, session_id)
                await repository.put_blobs(blobs)
                await repository.insert(results)
            return results

        return await self._commit([opaque for opaque, _ in stored], insert())

    async def upload(self, session_id: str, result_id: str, chunks: AsyncIterable[bytes]) -> Result:
        """Store a result's data, complete it, and queue the tasks that were waiting for it.

        A stream that does not end normally (cancelled, broken) raises out of `put`, which
        keeps nothing of it: the result stays as it was."""
        async with self.backends.database.read() as repository:
            await load_session(repository, session_id)
            (result,) = await load_results(repository, session_id, [result_id])
        if result.status != ResultStatus.CREATED:
            raise FailedPrecondition(f"Result {result_id} is {result.status.name}, not CREATED")
        opaque_id, size = await self.backends.objects.put(chunks)
        completed = await self._commit(
            [opaque_id], self._complete(session_id, [(result_id, opaque_id, size)])
        )
        if not completed:
            await self.backends.objects.delete([opaque_id])
            raise FailedPrecondition(f"Result {result_id} is no longer CREATED")
        return completed[0]

    async def _commit(self, opaque_ids: list[bytes], commit: Awaitable[T]) -> T:
        """Run `commit`, the transaction that makes the stored blobs `opaque_ids` a result's
        data, to its end even if the call is cancelled meanwhile (the client sent everything:
        leaving now must not leave the upload half done). When it fails, the blobs that no
        result refers to are deleted."""

        async def committing() -> T:
            try:
                return await commit
            except BaseException:
                await self._delete_unreferenced(opaque_ids)
                raise

        return await asyncio.shield(committing())

    async def _delete_unreferenced(self, opaque_ids: list[bytes]) -> None:
        await delete_unreferenced(self.backends, opaque_ids)

    async def _complete(
        self, session_id: str, stored: list[tuple[str, bytes, int]]
    ) -> list[Result]:
        """Mark CREATED results COMPLETED with their stored data; resolve their dependents."""
        stamp = now()
        completed: list[Result] = []
        async with self.backends.database.write() as repository:
            session = await load_session(repository, session_id)
            for result_id, opaque_id, size in stored:
                completed += await repository.update_returning(
                    Result,
                    {"result_id": result_id, "status": ResultStatus.CREATED},
                    {
                        "status": ResultStatus.COMPLETED,
                        "opaque_id": opaque_id,
                        "size": size,
                        "completed_at": stamp,
                    },
                )
            ready = await resolve(repository, session, [r.result_id for r in completed])
            ready = await push_ready_within(self.backends, repository, ready)
        await push_ready(self.backends, ready)
        return completed

    async def download(self, session_id: str, result_id: str) -> AsyncIterator[bytes]:
        async with self.backends.database.read() as repository:
            (result,) = await load_results(repository, session_id, [result_id])
        if not result.opaque_id:
            raise NotFound(f"Result {result_id} has no data ({result.status.name})")
        return self.backends.objects.get(result.opaque_id)

    async def delete_data(self, session_id: str, result_ids: list[str]) -> list[str]:
        async with self.backends.database.write() as repository:
            results = await load_results(repository, session_id, result_ids)
            deleted = await repository.update_returning(
                Result,
                {"result_id": [r.result_id for r in results if not r.manual_deletion]},
                {"status": ResultStatus.DELETED, "opaque_id": b""},
            )
        blobs = {r.result_id: r.opaque_id for r in results}
        await self.backends.objects.delete(
            [blobs[r.result_id] for r in deleted if blobs[r.result_id]]
        )
        return result_ids

    async def import_data(self, session_id: str, pairs: list[tuple[str, bytes]]) -> list[Result]:
        async with self.backends.database.read() as repository:
            await load_session(repository, session_id)
            results = await load_results(repository, session_id, [rid for rid, _ in pairs])
        not_created = [r.result_id for r in results if r.status != ResultStatus.CREATED]
        if not_created:
            raise FailedPrecondition(
                f"Results not in status CREATED: {', '.join(not_created[:10])}"
            )
        opaque_ids = [opaque for _, opaque in pairs]
        check_opaque_ids(opaque_ids)
        sizes = await self.backends.objects.sizes(opaque_ids)
        absent = [
            o.decode(errors="replace") for o, n in zip(opaque_ids, sizes, strict=True) if n is None
        ]
        if absent:
            raise NotFound(f"Opaque ids not found in object storage: {', '.join(absent[:10])}")
        return await self._complete(
            session_id,
            [(rid, opaque, size or 0) for (rid, opaque), size in zip(pairs, sizes, strict=True)],
        )

    async def get(self, result_id: str) -> Result:
        if not result_id:
            raise InvalidArgument("result_id is required")
        async with self.backends.database.read() as repository:
            result = await repository.get(Result, result_id)
        if result is None:
            raise NotFound(f"Result {result_id} not found")
        return result

    async def list_page(self, query: ListQuery) -> tuple[list[Result], int]:
        async with self.backends.database.read() as repository:
            return await repository.list_page(Result, query)

    async def owners(self, session_id: str, result_ids: list[str]) -> list[Result]:
        async with self.backends.database.read() as repository:
            return await load_results(repository, session_id, result_ids)
