"""The object-storage port: blobs under opaque ids chosen by the adapter."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Protocol

from pyarmonik.domain.errors import NotFound
from pyarmonik.domain.ids import time_ordered_uuid

# Size of the pieces in which data is streamed between the ports and gRPC.
CHUNK_SIZE = 1024 * 1024


class ObjectStorage(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def check_health(self) -> None:
        """Raise if the storage cannot be used now."""
        ...

    async def put(self, chunks: AsyncIterable[bytes], owner: str = "") -> tuple[bytes, int]:
        """Store a blob; return its opaque id and size. Atomic: a blob is whole or absent.
        `owner` (printable ASCII) names who stored it, for `delete_owned_by`."""
        ...

    async def put_file(self, path: Path, owner: str = "") -> tuple[bytes, int]:
        """Store a local file's content, like `put`. The file is handed over: it may be moved
        into the storage, so the caller must not use it afterwards."""
        ...

    async def delete_owned_by(self, owner: str) -> int:
        """Delete every blob stored with this `owner`; how many (a dead agent's task attempt
        leaves blobs that no result refers to). Scans the storage: for recoveries only."""
        ...

    async def get_file(self, opaque_id: bytes, path: Path) -> None:
        """Write a blob into a local file (created; it may share the storage's own copy, so
        it must only be read). Raises ObjectNotFound if absent."""
        ...

    def get(self, opaque_id: bytes) -> AsyncIterator[bytes]:
        """Stream a blob in chunks; raises ObjectNotFound if absent."""
        ...

    async def delete(self, opaque_ids: list[bytes]) -> None:
        """Delete blobs; absent ones are ignored."""
        ...

    async def sizes(self, opaque_ids: list[bytes]) -> list[int | None]:
        """Size of each blob, None where absent."""
        ...


def new_opaque_id(owner: str) -> str:
    """A fresh blob name: `<owner>.<hex>`, or the hex alone (time-ordered: domain/ids.py)."""
    name = time_ordered_uuid().hex
    return f"{owner}.{name}" if owner else name


class ObjectNotFound(NotFound):
    """No blob under this opaque id."""


async def read_all(storage: ObjectStorage, opaque_id: bytes) -> bytes:
    return b"".join([chunk async for chunk in storage.get(opaque_id)])


async def single_chunk(data: bytes) -> AsyncIterator[bytes]:
    """An async stream over in-memory data, in CHUNK_SIZE pieces."""
    for start in range(0, len(data), CHUNK_SIZE):
        yield data[start : start + CHUNK_SIZE]
