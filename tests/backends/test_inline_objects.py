"""Small blobs in the database (InlineObjects), on SQLite and PostgreSQL, over the file
storage and Redis. The ObjectStorage contract itself runs on it in test_objects_contract.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyarmonik.config import Settings
from pyarmonik.storage.database import Database
from pyarmonik.storage.database.sql import CHUNK
from pyarmonik.storage.factory import open_backends
from pyarmonik.storage.objects import CHUNK_SIZE, ObjectNotFound, read_all, single_chunk
from pyarmonik.storage.objects.inline import InlineObjects
from tests.backends import conftest_queue_objects as fixtures
from tests.backends.conftest import Backend
from tests.backends.conftest_queue_objects import ObjectBackend

pytestmark = pytest.mark.timeout(120)
s3_endpoint = fixtures.s3_endpoint

THRESHOLD = 1000


@pytest.fixture(params=["files", "redis"])
async def outer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectBackend]:
    async for backend in fixtures.open_object_backend(request.param, request, tmp_path):
        yield backend


@pytest.fixture
def objects(database: Database, outer: ObjectBackend) -> InlineObjects:
    return InlineObjects(database, outer.storage, THRESHOLD)


async def pieces(data: bytes, size: int = 300) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def rows(database: Database) -> list[bytes]:
    async with database.read() as repository:
        found = await repository.connection.fetch("SELECT opaque_id FROM objects")
    return sorted(bytes(row["opaque_id"]) for row in found)


@pytest.mark.parametrize("size", [0, 1, THRESHOLD, THRESHOLD + 1, 3 * CHUNK_SIZE + 5])
async def test_put_routes_by_size_and_round_trips(
    objects: InlineObjects, database: Database, outer: ObjectBackend, size: int
) -> None:
    """Exactly `threshold` bytes is a row, one more goes to the outer storage; both read back
    the same through every call."""
    data = os.urandom(size)
    opaque_id, stored = await objects.put(pieces(data))
    assert stored == size
    assert objects.is_inline(opaque_id) == (size <= THRESHOLD)
    assert (opaque_id in await rows(database)) == (size <= THRESHOLD)
    assert (await outer.leftovers() == []) == (size <= THRESHOLD)
    chunks = [chunk async for chunk in objects.get(opaque_id)]
    assert b"".join(chunks) == data and all(0 < len(c) <= CHUNK_SIZE for c in chunks)
    assert await objects.sizes([opaque_id]) == [size]
    assert await objects.read_many([opaque_id]) == {opaque_id: data}


@pytest.mark.parametrize("size", [0, THRESHOLD, THRESHOLD + 1, 200_000])
async def test_put_file_and_get_file(objects: InlineObjects, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    handed = tmp_path / "output"
    handed.write_bytes(data)
    opaque_id, stored = await objects.put_file(handed, "task-1")
    assert stored == size and objects.is_inline(opaque_id) == (size <= THRESHOLD)
    if size <= THRESHOLD:  # handed over: read and deleted (the outer may keep or move it)
        assert not handed.exists()
    target = tmp_path / "input"
    await objects.get_file(opaque_id, target)
    assert target.read_bytes() == data
    await objects.get_file(opaque_id, target)  # asked again: written anew
    assert target.read_bytes() == data
    assert await objects.sizes([opaque_id]) == [size]
    with pytest.raises(FileNotFoundError):
        await objects.put_file(tmp_path / "absent")


async def test_get_file_replaces_a_link_instead_of_writing_through_it(
    objects: InlineObjects, tmp_path: Path
) -> None:
    """A task folder's file may be a hard link to a stored blob (file storage): an inline blob
    written at its name must not change that blob."""
    stored = tmp_path / "stored-blob"
    stored.write_bytes(b"stored elsewhere")
    target = tmp_path / "input"
    os.link(stored, target)
    opaque_id, _ = await objects.put(single_chunk(b"inline"))
    await objects.get_file(opaque_id, target)
    assert target.read_bytes() == b"inline"
    assert stored.read_bytes() == b"stored elsewhere"


async def test_read_many_and_sizes_of_mixed_lists(objects: InlineObjects) -> None:
    small, _ = await objects.put(single_chunk(b"small"))
    large_data = os.urandom(THRESHOLD * 3)
    large, _ = await objects.put(single_chunk(large_data))
    assert await objects.read_many([large, small, large]) == {small: b"small", large: large_data}
    assert await objects.read_many([]) == {}
    absent_inline = objects.inline_id()
    absent_outer = b"0123456789abcdef0123456789abcdef"
    assert await objects.sizes([large, absent_inline, small, absent_outer]) == [
        THRESHOLD * 3,
        None,
        5,
        None,
    ]


@pytest.mark.parametrize("where", ["inline", "outer"])
async def test_absent_ids_raise_object_not_found(
    objects: InlineObjects, tmp_path: Path, where: str
) -> None:
    present, _ = await objects.put(single_chunk(b"present"))
    absent = objects.inline_id() if where == "inline" else b"0123456789abcdef0123456789abcdef"
    with pytest.raises(ObjectNotFound):
        await read_all(objects, absent)
    with pytest.raises(ObjectNotFound):
        await objects.get_file(absent, tmp_path / "absent")
    with pytest.raises(ObjectNotFound, match=absent.decode()):
        await objects.read_many([present, absent])


async def test_delete_mixed_lists(
    objects: InlineObjects, database: Database, outer: ObjectBackend
) -> None:
    small = [(await objects.put(single_chunk(b"s%d" % i)))[0] for i in range(3)]
    large = [(await objects.put(single_chunk(os.urandom(THRESHOLD + 1))))[0] for _ in range(2)]
    absent = [objects.inline_id(), b"0123456789abcdef0123456789abcdef"]
    await objects.delete([small[0], large[0], *absent, small[1]])
    assert await objects.sizes(small + large) == [None, None, 2, None, THRESHOLD + 1]
    await objects.delete([small[2]])
    await objects.delete([large[1]])
    await objects.delete([])
    assert await rows(database) == []
    assert await outer.leftovers() == []


async def test_delete_owned_by_removes_both_kinds(objects: InlineObjects, tmp_path: Path) -> None:
    owner = "task-1###2"
    handed = tmp_path / "handed"
    handed.write_bytes(b"from a file")
    mine = [
        (await objects.put(single_chunk(b"small"), owner))[0],
        (await objects.put(single_chunk(os.urandom(THRESHOLD + 1)), owner))[0],
        (await objects.put_file(handed, owner))[0],
    ]
    others = [
        (await objects.put(single_chunk(b"other"), "task-1###20"))[0],
        (await objects.put(single_chunk(b"x" * (THRESHOLD + 1)), "task-1"))[0],
        (await objects.put(single_chunk(b"unowned")))[0],
    ]
    assert await objects.delete_owned_by(owner) == 3
    assert await objects.sizes(mine) == [None] * 3
    assert await objects.sizes(others) == [5, THRESHOLD + 1, 7]
    assert await objects.delete_owned_by(owner) == 0


async def test_threshold_zero_stores_nothing_inline_but_reads_it(
    objects: InlineObjects, database: Database, tmp_path: Path
) -> None:
    earlier, _ = await objects.put(single_chunk(b"earlier"))
    off = InlineObjects(database, objects.outer, 0)
    empty, size = await off.put(single_chunk(b""))
    handed = tmp_path / "handed"
    handed.write_bytes(b"tiny")
    tiny, _ = await off.put_file(handed)
    assert size == 0 and not off.is_inline(empty) and not off.is_inline(tiny)
    assert not off.fits(0)
    assert await read_all(off, earlier) == b"earlier"
    assert await read_all(off, tiny) == b"tiny"


async def test_blobs_stored_in_a_caller_transaction_commit_or_roll_back_with_it(
    objects: InlineObjects, database: Database
) -> None:
    kept = objects.inline_id("task-9")
    async with database.write() as repository:
        await repository.put_blobs([(kept, "task-9", b"kept")])
    lost = objects.inline_id("task-9")
    with pytest.raises(RuntimeError):
        async with database.write() as repository:
            await repository.put_blobs([(lost, "task-9", b"lost")])
            raise RuntimeError("transaction fails")
    assert await objects.read_many([kept]) == {kept: b"kept"}
    assert await objects.sizes([lost]) == [None]
    # Stored again by a retried transaction: the blob stays as it was.
    async with database.write() as repository:
        await repository.put_blobs([(kept, "task-9", b"kept")])
    assert await objects.delete_owned_by("task-9") == 1


async def test_many_blobs_in_one_call(objects: InlineObjects, database: Database) -> None:
    """More ids than one statement takes (chunked queries)."""
    blobs = [(objects.inline_id("bulk"), "bulk", b"%d" % i) for i in range(CHUNK + 10)]
    async with database.write() as repository:
        await repository.put_blobs(blobs)
    ids = [i for i, _, _ in blobs]
    found = await objects.read_many(ids)
    assert [found[i] for i in ids] == [data for _, _, data in blobs]
    assert await objects.sizes(ids) == [len(data) for _, _, data in blobs]
    await objects.delete(ids[: CHUNK + 5])
    assert await objects.delete_owned_by("bulk") == 5


async def test_readable_after_a_restart(backend: Backend, outer: ObjectBackend) -> None:
    first = await backend.open()
    opaque_id, _ = await InlineObjects(first, outer.storage, THRESHOLD).put(single_chunk(b"kept"))
    await first.close()
    backend.opened.remove(first)
    second = await backend.open()
    assert await read_all(InlineObjects(second, outer.storage, THRESHOLD), opaque_id) == b"kept"


async def test_outer_ids_never_look_inline(objects: InlineObjects, tmp_path: Path) -> None:
    """Ids made by the outer storage (with or without an owner) never take the inline prefix."""
    handed = tmp_path / "handed"
    handed.write_bytes(os.urandom(THRESHOLD + 1))
    made = [
        (await objects.outer.put(single_chunk(b"x"), owner))[0]
        for owner in ("", "task-1###2", "6c1f0e0a-1b1f-4f4e-9a43-1d3c3a8b5d2e")
    ]
    made.append((await objects.put_file(handed, "task-1"))[0])
    assert not any(objects.is_inline(opaque_id) for opaque_id in made)
    assert objects.is_inline(objects.inline_id("task-1"))


async def test_factory_wraps_the_object_storage(tmp_path: Path) -> None:
    backends = open_backends(Settings(data_dir=tmp_path, inline_threshold=123))
    assert isinstance(backends.objects, InlineObjects)
    assert backends.objects.threshold == 123
    assert backends.objects.database is backends.database
    await backends.start()
    try:
        opaque_id, _ = await backends.objects.put(single_chunk(b"x" * 123))
        assert InlineObjects.is_inline(opaque_id)
        opaque_id, _ = await backends.objects.put(single_chunk(b"x" * 124))
        assert not InlineObjects.is_inline(opaque_id)
    finally:
        await backends.close()
    disabled = open_backends(Settings(data_dir=tmp_path, inline_threshold=0))
    assert isinstance(disabled.objects, InlineObjects) and disabled.objects.threshold == 0


def test_threshold_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYARMONIK_INLINE_THRESHOLD", "4096")
    assert Settings().inline_threshold == 4096
    monkeypatch.setenv("PYARMONIK_INLINE_THRESHOLD", "-1")
    with pytest.raises(ValueError):
        Settings()


async def test_postgres_schema_of_version_3_gets_the_objects_table() -> None:
    from pyarmonik.storage.database.postgres import PostgresDatabase
    from tests.backends.conftest import postgres_schema

    async with postgres_schema() as url:
        database = PostgresDatabase(url)
        await database.start()
        async with database.write() as repository:
            await repository.connection.execute("DROP TABLE objects")
            await repository.connection.execute("DELETE FROM schema_version WHERE version >= 4")
        await database.close()
        again = PostgresDatabase(url)
        await again.start()
        try:
            async with again.write() as repository:
                await repository.put_blobs([(b"db:x", "", b"data")])
                assert await repository.blobs([b"db:x"]) == {b"db:x": b"data"}
        finally:
            await again.close()
