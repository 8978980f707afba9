"""Local-folder object storage: one file per blob, written to a temporary name then renamed
(or, for a file handed over by `put_file`, renamed itself), and read-only from then on.

`get_file` hard-links the blob where it is asked for (a task's data folder): no copy, and
no new inode, which on ext4 costs more than the copy (it searches the inode bitmap past the
inodes recently freed). Blobs are read-only so that a worker cannot write through the link
(as an unprivileged user; root ignores permissions, as with any file it is given).

Small files (up to INLINE_SIZE) are read and written on the event loop: a page-cache
operation of a few microseconds costs far less than a trip to a thread (a future, a
wake-up, two GIL hand-offs), and the agent does several per task. Larger ones go to a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

from pyarmonik.storage.objects import CHUNK_SIZE, ObjectNotFound, new_opaque_id

INLINE_SIZE = 128 * 1024
READ_ONLY = 0o444
# Temporary files are named after their writer (host and process), so that a process killed
# mid-write can be told from one still writing: see `sweep_dead_writers`.
_HOST = socket.gethostname().replace(".", "_")  # no dot: the name is split on dots
_WRITER = f"{_HOST}-{os.getpid()}"


def _writer_alive(writer: str) -> bool:
    """Whether the `<host>-<pid>` that named a temporary file may still be writing it (a
    process of another host is assumed alive: we cannot look)."""
    host, _, pid = writer.rpartition("-")
    if host != _HOST or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_dead_writers(folder: Path) -> int:
    """Delete the temporary files that processes of this host left when they died mid-write
    (kill -9 leaves no time to clean up); how many."""
    swept = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            parts = entry.name.split(".")
            # .<name>.<host>-<pid>.<random>.tmp (an owner may put dots in <name>)
            temporary = entry.name.startswith(".") and len(parts) >= 5 and parts[-1] == "tmp"
            if temporary and not _writer_alive(parts[-3]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    swept += 1
    return swept


def _append(handle: BinaryIO | None, path: Path, pieces: list[bytes]) -> BinaryIO:
    if handle is None:
        handle = open(path, "wb")  # noqa: SIM115 - closed by write_file
    handle.writelines(pieces)
    return handle


def _close(handle: BinaryIO | None, path: Path, pieces: list[bytes]) -> None:
    _append(handle, path, pieces).close()


async def write_file(path: Path, chunks: AsyncIterable[bytes]) -> int:
    """Write a stream to `path` (created or truncated), by CHUNK_SIZE batches in a thread;
    data of at most INLINE_SIZE in all is written on the loop. Returns the size."""
    handle: BinaryIO | None = None
    pending: list[bytes] = []
    buffered = size = 0
    try:
        async for chunk in chunks:
            pending.append(chunk)
            buffered += len(chunk)
            size += len(chunk)
            if buffered >= CHUNK_SIZE:
                handle = await asyncio.to_thread(_append, handle, path, pending)
                pending, buffered = [], 0
        if handle is None and size <= INLINE_SIZE:
            _close(handle, path, pending)
        else:
            await asyncio.to_thread(_close, handle, path, pending)
    except BaseException:
        if handle is not None:
            handle.close()
        raise
    return size


async def write_atomically(
    path: Path, chunks: AsyncIterable[bytes], mode: int | None = None
) -> int:
    """`write_file` through a temporary file renamed at the end: a reader sees the whole
    file or none. `mode`: the file's permissions, if not the default ones."""
    temporary = path.with_name(f".{path.name}.{_WRITER}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        size = await write_file(temporary, chunks)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return size


async def read_chunks(path: Path) -> AsyncIterator[bytes]:
    """Stream a file in CHUNK_SIZE pieces, read in a thread (a small file is read on the
    loop). Raises FileNotFoundError when absent."""
    # Opening is a metadata operation, cheaper on the loop than a thread trip (module doc).
    handle = open(path, "rb")  # noqa: ASYNC230, SIM115 - closed below
    try:
        if os.fstat(handle.fileno()).st_size <= INLINE_SIZE:
            chunk = handle.read()
        else:
            chunk = await asyncio.to_thread(handle.read, CHUNK_SIZE)
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
        await asyncio.to_thread(sweep_dead_writers, self.root)

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

    async def put(self, chunks: AsyncIterable[bytes], owner: str = "") -> tuple[bytes, int]:
        opaque_id = new_opaque_id(owner)
        size = await write_atomically(self.root / opaque_id, chunks, READ_ONLY)
        return opaque_id.encode(), size

    async def put_file(self, path: Path, owner: str = "") -> tuple[bytes, int]:
        """The file becomes the blob, renamed into the folder (no copy) when both are on one
        file system. A rename is atomic, so readers still see whole blobs or none."""
        opaque_id = new_opaque_id(owner)
        size = os.stat(path).st_size
        try:
            os.rename(path, self.root / opaque_id)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            return await self.put(read_chunks(path), owner)
        os.chmod(self.root / opaque_id, READ_ONLY)
        return opaque_id.encode(), size

    async def get_file(self, opaque_id: bytes, path: Path) -> None:
        source = self._path(opaque_id)
        try:
            try:
                os.link(source, path)
            except FileExistsError:  # asked again: the latest copy wins, as with a write
                os.unlink(path)
                os.link(source, path)
        except FileNotFoundError:
            raise ObjectNotFound(f"object {opaque_id.decode(errors='replace')} not found") from None
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            await write_file(path, self.get(opaque_id))  # another file system: a copy

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

    async def delete_owned_by(self, owner: str) -> int:
        prefix = f"{owner}."

        def remove() -> int:
            with os.scandir(self.root) as entries:
                owned = [entry.path for entry in entries if entry.name.startswith(prefix)]
            for path in owned:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            return len(owned)

        return await asyncio.to_thread(remove)

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
