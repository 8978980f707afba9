"""Local-folder object storage: one file per blob, written to a temporary name then renamed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

from pyarmonik.storage.objects import CHUNK_SIZE, ObjectNotFound


def _append(handle: BinaryIO | None, temporary: Path, pieces: list[bytes]) -> BinaryIO:
    if handle is None:
        handle = open(temporary, "wb")  # noqa: SIM115 - closed by _finish or _discard
    handle.writelines(pieces)
    return handle


def _finish(handle: BinaryIO | None, temporary: Path, pieces: list[bytes], path: Path) -> None:
    _append(handle, temporary, pieces).close()
    os.replace(temporary, path)


def _discard(handle: BinaryIO | None, temporary: Path) -> None:
    if handle is not None:
        handle.close()
    temporary.unlink(missing_ok=True)


def _open_read(path: Path) -> tuple[BinaryIO, bytes]:
    handle = open(path, "rb")  # noqa: SIM115 - closed by read_chunks
    return handle, handle.read(CHUNK_SIZE)


async def write_atomically(path: Path, chunks: AsyncIterable[bytes]) -> int:
    """Write a stream to `path` through a temporary file renamed at the end (a reader sees
    the whole file or none). Data is written by CHUNK_SIZE batches: small data costs a single
    trip to a thread."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    handle: BinaryIO | None = None
    pending: list[bytes] = []
    buffered = size = 0
    try:
        async for chunk in chunks:
            pending.append(chunk)
            buffered += len(chunk)
            size += len(chunk)
            if buffered >= CHUNK_SIZE:
                handle = await asyncio.to_thread(_append, handle, temporary, pending)
                pending, buffered = [], 0
        await asyncio.to_thread(_finish, handle, temporary, pending, path)
    except BaseException:
        await asyncio.to_thread(_discard, handle, temporary)
        raise
    return size


async def read_chunks(path: Path) -> AsyncIterator[bytes]:
    """Stream a file in CHUNK_SIZE pieces; a small file costs a single trip to a thread.
    Raises FileNotFoundError when absent."""
    handle, chunk = await asyncio.to_thread(_open_read, path)
    try:
        while chunk:
            yield chunk
            if len(chunk) < CHUNK_SIZE:
                break
            chunk = await asyncio.to_thread(handle.read, CHUNK_SIZE)
    finally:
        handle.close()


class FileStorage:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def check_health(self) -> None:
        if not await asyncio.to_thread(os.access, self.root, os.W_OK):
            raise OSError(f"object folder {self.root} is not writable")

    def _path(self, opaque_id: bytes) -> Path:
        name = opaque_id.decode("ascii", errors="strict")
        # Opaque ids are ours (uuid hex), but never let one escape the folder.
        if not name or "/" in name or name.startswith("."):
            raise ObjectNotFound(f"object {opaque_id!r} not found")
        return self.root / name

    async def put(self, chunks: AsyncIterable[bytes]) -> tuple[bytes, int]:
        opaque_id = uuid.uuid4().hex
        size = await write_atomically(self.root / opaque_id, chunks)
        return opaque_id.encode(), size

    async def get(self, opaque_id: bytes) -> AsyncIterator[bytes]:
        path = self._path(opaque_id)
        try:
            chunks = read_chunks(path)
            first = await anext(chunks, None)
        except FileNotFoundError:
            raise ObjectNotFound(f"object {opaque_id.decode(errors='replace')} not found") from None
        if first is not None:
            yield first
            async for chunk in chunks:
                yield chunk

    async def delete(self, opaque_ids: list[bytes]) -> None:
        def remove() -> None:
            for opaque_id in opaque_ids:
                with contextlib.suppress(ObjectNotFound):
                    self._path(opaque_id).unlink(missing_ok=True)

        await asyncio.to_thread(remove)

    async def sizes(self, opaque_ids: list[bytes]) -> list[int | None]:
        def measure() -> list[int | None]:
            found: list[int | None] = []
            for opaque_id in opaque_ids:
                try:
                    found.append(self._path(opaque_id).stat().st_size)
                except (ObjectNotFound, FileNotFoundError):
                    found.append(None)
            return found

        return await asyncio.to_thread(measure)
