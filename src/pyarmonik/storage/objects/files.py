"""Local-folder object storage: one file per blob, written to a temporary name then renamed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

from pyarmonik.storage.objects import CHUNK_SIZE, ObjectNotFound


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
        temporary = self.root / f".{opaque_id}.tmp"
        size = 0
        handle = await asyncio.to_thread(open, temporary, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                await asyncio.to_thread(handle.write, chunk)
        except BaseException:
            handle.close()
            temporary.unlink(missing_ok=True)
            raise
        await asyncio.to_thread(handle.close)
        await asyncio.to_thread(os.replace, temporary, self.root / opaque_id)
        return opaque_id.encode(), size

    async def get(self, opaque_id: bytes) -> AsyncIterator[bytes]:
        path = self._path(opaque_id)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"object {opaque_id.decode(errors='replace')} not found") from None
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_SIZE):
                yield chunk
        finally:
            handle.close()

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
