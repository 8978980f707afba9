"""Small blobs in the database, larger ones in an object storage: one ObjectStorage for both.

A blob of up to `threshold` bytes is a row of the database's `objects` table; its opaque id
is `db:` followed by an id as the other adapters make them (`<owner>.<hex>` or `<hex>`).
No other adapter's id starts with `db:`: theirs are `new_opaque_id(owner)`, hex digits after
an optional owner, and owners are task ids (uuids, `###<n>` for retries). So every call routes
by prefix alone, whatever the threshold was when the blob was stored: a process started with
another threshold (or 0, which stores nothing new in the database) still reads every blob.

A file per tiny payload or output costs a create, a rename and an unlink on the file system
(or a round trip to Redis or S3); a row costs an insert in a transaction the caller often
commits anyway. See `InlineObjects` for storing blobs inside one's own write transaction.

The default threshold (config.DEFAULT_INLINE_THRESHOLD, 64 KiB) comes from measurements on
ext4: a put into SQLite cost 0.15-0.35 ms up to 64 KiB against 0.5-1.5 ms for a file, reads
were even; at 256 KiB the row's gain shrinks and at 1 MiB it loses (the WAL writes it twice and
the single writer holds its lock longer). Inside a transaction committed anyway, a blob adds
0.3 ms (SQLite) to 0.5 ms (PostgreSQL) up to 16 KiB, 1-2 ms at 64 KiB, 3-7 ms at 256 KiB.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

from pyarmonik.storage.database import Database
from pyarmonik.storage.objects import (
    CHUNK_SIZE,
    ObjectNotFound,
    ObjectStorage,
    new_opaque_id,
    read_all,
    single_chunk,
)
from pyarmonik.storage.objects.files import INLINE_SIZE

PREFIX = b"db:"


def _not_found(opaque_ids: list[bytes]) -> ObjectNotFound:
    names = ", ".join(i.decode(errors="replace") for i in opaque_ids[:10])
    return ObjectNotFound(f"object {names} not found")


async def _chain(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk


def write_new(path: Path, data: bytes) -> None:
    """Write `data` into a new file at `path`. A file already there is replaced, never written
    through: it may be a hard link to a blob of the file storage (files.py `get_file`)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        descriptor = os.open(path, flags, 0o666)
    except FileExistsError:
        os.unlink(path)
        descriptor = os.open(path, flags, 0o666)
    with open(descriptor, "wb") as handle:
        handle.write(data)


async def write_file(path: Path, data: bytes) -> None:
    """`write_new`, on the loop for a small blob (a page-cache write costs less than a
    thread trip), in a thread for a larger one."""
    if len(data) <= INLINE_SIZE:
        write_new(path, data)
    else:
        await asyncio.to_thread(write_new, path, data)


class InlineObjects:
    """The ObjectStorage port over a database (blobs of at most `threshold` bytes) and an
    `outer` storage (larger ones). A threshold of 0 stores nothing new in the database.

    A caller inside an open write transaction may store small blobs in it, committed (or
    rolled back) with the rest:

        if objects.fits(len(data)):
            opaque_id = objects.inline_id(owner)
            await repository.put_blobs([(opaque_id, owner, data)])

    The database is started and closed by Backends; `start`/`close` here are the outer's.
    """

    def __init__(self, database: Database, outer: ObjectStorage, threshold: int):
        self.database = database
        self.outer = outer
        self.threshold = threshold

    # -- routing ---------------------------------------------------------------------------

    def inline_id(self, owner: str = "") -> bytes:
        """A fresh opaque id for a blob stored in the database."""
        return PREFIX + new_opaque_id(owner).encode()

    @staticmethod
    def is_inline(opaque_id: bytes) -> bool:
        return opaque_id.startswith(PREFIX)

    def fits(self, size: int) -> bool:
        """Whether a blob of this size belongs in the database."""
        return self.threshold > 0 and size <= self.threshold

    def _split(self, opaque_ids: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        inline = [i for i in opaque_ids if i.startswith(PREFIX)]
        if not inline:
            return inline, opaque_ids
        return inline, [i for i in opaque_ids if not i.startswith(PREFIX)]

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.outer.start()

    async def close(self) -> None:
        await self.outer.close()

    async def check_health(self) -> None:
        await self.outer.check_health()

    # -- writing ---------------------------------------------------------------------------

    async def _insert(self, data: bytes, owner: str) -> bytes:
        opaque_id = self.inline_id(owner)
        async with self.database.write() as repository:
            await repository.put_blobs([(opaque_id, owner, data)])
        return opaque_id

    async def put(self, chunks: AsyncIterable[bytes], owner: str = "") -> tuple[bytes, int]:
        """Read up to `threshold` bytes: a stream that ends there is one row, a longer one goes
        to the outer storage whole (what was read, then the rest)."""
        if self.threshold <= 0:
            return await self.outer.put(chunks, owner)
        stream = aiter(chunks)
        read: list[bytes] = []
        size = 0
        while (chunk := await anext(stream, None)) is not None:
            read.append(chunk)
            size += len(chunk)
            if size > self.threshold:
                return await self.outer.put(_chain(read, stream), owner)
        return await self._insert(b"".join(read), owner), size

    async def put_file(self, path: Path, owner: str = "") -> tuple[bytes, int]:
        """A small file is read, stored as a row and deleted (it is handed over); a larger
        one is the outer storage's."""
        data = await self.take_small_file(path)
        if data is None:
            return await self.outer.put_file(path, owner)
        if not self.fits(len(data)):  # grown since the stat: written meanwhile
            return await self.outer.put(single_chunk(data), owner)
        return await self._insert(data, owner), len(data)

    async def take_small_file(self, path: Path) -> bytes | None:
        """`read_small_file`, the file deleted when read (handed over)."""
        data = await self.read_small_file(path)
        if data is not None:
            path.unlink(missing_ok=True)  # noqa: ASYNC240 - a metadata operation
        return data

    async def read_small_file(self, path: Path, size: int | None = None) -> bytes | None:
        """The content of a file (of `size` bytes, if known) that fits in the database; None
        when it does not fit."""
        # stat and small reads on the loop: page-cache operations, cheaper than a thread trip.
        if size is None:
            size = os.stat(path).st_size
        if not self.fits(size):
            return None
        if size <= INLINE_SIZE:
            return path.read_bytes()  # noqa: ASYNC240 - small (see above)
        return await asyncio.to_thread(path.read_bytes)

    # -- reading ---------------------------------------------------------------------------

    async def _read(self, opaque_id: bytes) -> bytes:
        async with self.database.read() as repository:
            found = await repository.blobs([opaque_id])
        if opaque_id not in found:
            raise _not_found([opaque_id])
        return found[opaque_id]

    def get(self, opaque_id: bytes) -> AsyncIterator[bytes]:
        # A large blob streams straight from the outer storage, without a layer per chunk.
        if not opaque_id.startswith(PREFIX):
            return self.outer.get(opaque_id)
        return self._get_inline(opaque_id)

    async def _get_inline(self, opaque_id: bytes) -> AsyncIterator[bytes]:
        data = await self._read(opaque_id)
        for start in range(0, len(data), CHUNK_SIZE):
            yield data[start : start + CHUNK_SIZE]

    async def get_file(self, opaque_id: bytes, path: Path) -> None:
        if not opaque_id.startswith(PREFIX):
            return await self.outer.get_file(opaque_id, path)
        await write_file(path, await self._read(opaque_id))

    async def read_many(self, opaque_ids: list[bytes]) -> dict[bytes, bytes]:
        """The data of these blobs, by id: the database's in one query, the others read
        concurrently. Raises ObjectNotFound naming the absent ones."""
        inline, outer = self._split(list(dict.fromkeys(opaque_ids)))
        found: dict[bytes, bytes] = {}
        absent: list[bytes] = []

        async def read_outer(opaque_id: bytes) -> None:
            try:
                found[opaque_id] = await read_all(self.outer, opaque_id)
            except ObjectNotFound:
                absent.append(opaque_id)

        async def read_inline() -> None:
            async with self.database.read() as repository:
                found.update(await repository.blobs(inline))

        await asyncio.gather(*([read_inline()] if inline else []), *(read_outer(i) for i in outer))
        absent += [i for i in inline if i not in found]
        if absent:
            raise _not_found(absent)
        return found

    async def sizes(self, opaque_ids: list[bytes]) -> list[int | None]:
        inline, outer = self._split(opaque_ids)
        if not inline:
            return await self.outer.sizes(opaque_ids)
        async with self.database.read() as repository:
            known: dict[bytes, int | None] = dict(await repository.blob_sizes(inline))
        if outer:
            known.update(zip(outer, await self.outer.sizes(outer), strict=True))
        return [known.get(i) for i in opaque_ids]

    # -- deleting --------------------------------------------------------------------------

    async def _delete_inline(self, opaque_ids: list[bytes]) -> None:
        async with self.database.write() as repository:
            await repository.delete_blobs(opaque_ids)

    async def delete(self, opaque_ids: list[bytes]) -> None:
        inline, outer = self._split(opaque_ids)
        if not inline:
            await self.outer.delete(outer)
        elif not outer:
            await self._delete_inline(inline)
        else:
            await asyncio.gather(self._delete_inline(inline), self.outer.delete(outer))

    async def delete_owned_by(self, owner: str) -> int:
        async def delete_rows() -> int:
            async with self.database.write() as repository:
                return await repository.delete_blobs_owned_by(owner)

        rows, blobs = await asyncio.gather(delete_rows(), self.outer.delete_owned_by(owner))
        return rows + blobs
