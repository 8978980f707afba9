"""The ObjectStorage port's contract, run against every adapter."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyarmonik.domain.errors import Unavailable
from pyarmonik.storage.objects import CHUNK_SIZE, ObjectNotFound, read_all, single_chunk
from tests.backends import conftest_queue_objects as fixtures
from tests.backends.conftest_queue_objects import ObjectBackend

pytestmark = pytest.mark.timeout(120)
# The fixtures, used by name.
object_backend = fixtures.object_backend
s3_endpoint = fixtures.s3_endpoint

ABSENT = b"0123456789abcdef0123456789abcdef"


async def odd_chunks(data: bytes, size: int = 300_001) -> AsyncIterator[bytes]:
    """A stream whose pieces do not line up with CHUNK_SIZE."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_healthy_once_started(object_backend: ObjectBackend) -> None:
    await object_backend.storage.check_health()


@pytest.mark.parametrize(
    "size",
    [0, 1024, int(3.5 * CHUNK_SIZE), int(12.5 * CHUNK_SIZE)],
    ids=["0B", "1KiB", "3.5MiB", "12.5MiB"],
)
async def test_round_trip(object_backend: ObjectBackend, size: int) -> None:
    storage = object_backend.storage
    data = os.urandom(size)
    opaque_id, stored = await storage.put(odd_chunks(data))
    assert stored == size
    chunks = [chunk async for chunk in storage.get(opaque_id)]
    assert b"".join(chunks) == data
    assert all(0 < len(chunk) <= CHUNK_SIZE for chunk in chunks)
    if size > CHUNK_SIZE:
        assert len(chunks) >= size // CHUNK_SIZE  # streamed, not read in one piece
    assert await storage.sizes([opaque_id]) == [size]


@pytest.mark.parametrize("size", [0, 1024, int(2.5 * CHUNK_SIZE)], ids=["0B", "1KiB", "2.5MiB"])
async def test_put_file(object_backend: ObjectBackend, tmp_path: Path, size: int) -> None:
    """A local file handed over is stored whole (moved or copied: the caller no longer
    uses it), and each file gets a blob of its own."""
    storage = object_backend.storage
    data = os.urandom(size)
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(data)
    second.write_bytes(b"other")
    opaque_id, stored_size = await storage.put_file(first)
    other_id, _ = await storage.put_file(second)
    assert stored_size == size and other_id != opaque_id
    assert await read_all(storage, opaque_id) == data
    assert await read_all(storage, other_id) == b"other"
    with pytest.raises(FileNotFoundError):
        await storage.put_file(tmp_path / "absent")


async def test_get_file(object_backend: ObjectBackend, tmp_path: Path) -> None:
    """A blob written into a local file, again over an earlier copy; absent: ObjectNotFound."""
    storage = object_backend.storage
    data = os.urandom(3000)
    opaque_id, _ = await storage.put(single_chunk(data))
    target = tmp_path / "input"
    await storage.get_file(opaque_id, target)
    assert target.read_bytes() == data
    other_id, _ = await storage.put(single_chunk(b"other"))
    await storage.get_file(other_id, target)
    assert target.read_bytes() == b"other"
    await storage.delete([opaque_id])
    with pytest.raises(ObjectNotFound):
        await storage.get_file(opaque_id, tmp_path / "absent")


async def test_sizes_and_delete(object_backend: ObjectBackend) -> None:
    storage = object_backend.storage
    first, _ = await storage.put(single_chunk(b"x" * 10))
    second, _ = await storage.put(single_chunk(b"y" * 20))
    assert await storage.sizes([first, second, ABSENT]) == [10, 20, None]
    assert await storage.sizes([]) == []
    await storage.delete([first, ABSENT])
    await storage.delete([])
    assert await storage.sizes([first, second]) == [None, 20]
    with pytest.raises(ObjectNotFound):
        await read_all(storage, first)
    assert await read_all(storage, second) == b"y" * 20
    await storage.delete([second])
    assert await object_backend.leftovers() == []


async def test_get_absent_raises(object_backend: ObjectBackend) -> None:
    with pytest.raises(ObjectNotFound):
        await read_all(object_backend.storage, ABSENT)


async def test_equal_data_gets_distinct_ids(object_backend: ObjectBackend) -> None:
    storage = object_backend.storage
    first, _ = await storage.put(single_chunk(b"same"))
    second, _ = await storage.put(single_chunk(b"same"))
    assert first != second
    assert isinstance(first, bytes)
    await storage.delete([first])
    assert await read_all(storage, second) == b"same"


async def test_failed_put_leaves_nothing(object_backend: ObjectBackend) -> None:
    async def failing() -> AsyncIterator[bytes]:
        # Past one S3 part and several Redis chunks before the failure.
        for _ in range(6):
            yield os.urandom(CHUNK_SIZE)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        await object_backend.storage.put(failing())
    assert await object_backend.leftovers() == []


# ------------------------------------------------------------------- one adapter each


async def test_redis_unreachable_names_host_not_password() -> None:
    from pyarmonik.storage.objects.redis import RedisStorage

    with pytest.raises(Unavailable) as caught:
        await RedisStorage("redis://:s3cret@127.0.0.1:1/0").start()
    assert "127.0.0.1:1" in str(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_s3_unreachable_names_endpoint_not_secret() -> None:
    from pyarmonik.storage.objects.s3 import S3Storage

    with pytest.raises(Unavailable) as caught:
        await S3Storage("s3://key:s3cret@bucket?endpoint=http://127.0.0.1:1").start()
    assert "http://127.0.0.1:1" in str(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_delete_owned_by(object_backend: ObjectBackend, tmp_path: Path) -> None:
    """The blobs of one owner go, whatever their size; other owners' blobs and unowned ones
    stay (an owner whose name starts another's included)."""
    storage = object_backend.storage
    big = os.urandom(int(2.5 * CHUNK_SIZE))
    owner = "task-1###2"
    mine = [
        (await storage.put(single_chunk(b"small"), owner))[0],
        (await storage.put(odd_chunks(big), owner))[0],
    ]
    handed = tmp_path / "handed"
    handed.write_bytes(b"from a file")
    mine.append((await storage.put_file(handed, owner))[0])
    others = [
        (await storage.put(single_chunk(b"other"), "task-1###20"))[0],
        (await storage.put(single_chunk(b"other"), "task-1"))[0],
        (await storage.put(single_chunk(b"unowned")))[0],
    ]
    assert await storage.delete_owned_by(owner) == len(mine)
    assert await storage.sizes(mine) == [None] * len(mine)
    assert await storage.sizes(others) == [5, 5, 7]
    assert await storage.delete_owned_by(owner) == 0
    assert await storage.delete_owned_by("glob*[chars]?") == 0
    assert await storage.sizes(others) == [5, 5, 7]
