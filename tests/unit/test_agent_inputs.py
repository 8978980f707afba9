"""compute/inputs.py on the embedded backends: the payloads and inputs of a group of tasks
found in one query, written as files for official workers or read for the batched path;
inputs without data are named, never written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyarmonik.compute.folders import KEPT_INPUTS, TaskFolders
from pyarmonik.compute.inputs import read_inputs, write_inputs
from pyarmonik.domain.options import TaskOptions
from pyarmonik.domain.records import Result, Task
from pyarmonik.scheduling.backends import Backends
from pyarmonik.storage.database.sqlite import SqliteDatabase
from pyarmonik.storage.objects import single_chunk
from pyarmonik.storage.objects.files import FileStorage
from pyarmonik.storage.objects.inline import InlineObjects
from pyarmonik.storage.queue.table import TableQueue

SMALL, BIG = b"small", bytes(range(256)) * 4  # in the database, in the file storage


@pytest.fixture
async def backends(tmp_path: Path) -> AsyncIterator[Backends]:
    database = SqliteDatabase(tmp_path / "db.sqlite")
    objects = InlineObjects(database, FileStorage(tmp_path / "objects"), threshold=64)
    opened = Backends(database, TableQueue(database), objects)
    await opened.start()
    yield opened
    await opened.close()


async def stored(backends: Backends) -> list[Task]:
    """Results `small`, `big`, `absent` (no data yet) and `vanished` (its blob deleted), and
    tasks: t1 (payload small, input big), t2 (payload absent), t3 (input vanished)."""
    objects = backends.objects
    assert isinstance(objects, InlineObjects)
    small, _ = await objects.put(single_chunk(SMALL))
    big, _ = await objects.put(single_chunk(BIG))
    vanished, _ = await objects.put(single_chunk(b"gone"))
    assert objects.is_inline(small) and not objects.is_inline(big)
    await objects.delete([vanished])
    opaque = {"small": small, "big": big, "absent": b"", "vanished": vanished}
    async with backends.database.write() as repository:
        await repository.insert(
            [Result(result_id=i, session_id="s", name=i, opaque_id=o) for i, o in opaque.items()]
        )
    options = TaskOptions(max_duration=60)

    def task(task_id: str, payload: str, *inputs: str) -> Task:
        return Task(task_id, "s", payload, options, data_dependencies=list(inputs))

    return [task("t1", "small", "big"), task("t2", "absent"), task("t3", "small", "vanished")]


async def test_inputs_are_written_as_files_and_missing_ones_named(
    backends: Backends, tmp_path: Path
) -> None:
    tasks = await stored(backends)
    slots = TaskFolders(tmp_path / "slots")
    await slots.start()
    folders = {t.task_id: slots.take() for t in tasks}
    missing = await write_inputs(backends, slots, folders, tasks)
    assert missing == {"t2": ["absent"], "t3": ["vanished"]}
    assert (folders["t1"] / "small").read_bytes() == SMALL
    assert (folders["t1"] / "big").read_bytes() == BIG
    assert list(folders["t2"].iterdir()) == []  # nothing written for a task that cannot run


async def test_inputs_are_read_together(backends: Backends) -> None:
    tasks = await stored(backends)
    data, missing = await read_inputs(backends, tasks)
    assert data == {"small": SMALL, "big": BIG}
    assert missing == {"absent", "vanished"}


async def test_an_input_kept_in_a_reused_folder_is_not_written_again(
    backends: Backends, tmp_path: Path
) -> None:
    """Tasks sharing a payload: the next task of a folder finds it there; the worker's own
    files are removed; a kept input the worker changed is written anew."""
    first, _, _ = await stored(backends)
    slots = TaskFolders(tmp_path / "slots")
    await slots.start()
    folder = slots.take()
    assert await write_inputs(backends, slots, {"t1": folder}, [first]) == {}
    written = {name: (folder / name).stat().st_ino for name in ("small", "big")}
    (folder / "output").write_bytes(b"the worker's")
    slots.give_back(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["big", "small"]

    again = Task("t4", "s", "small", TaskOptions(max_duration=60), data_dependencies=["big"])
    assert slots.take() == folder
    assert await write_inputs(backends, slots, {"t4": folder}, [again]) == {}
    assert {name: (folder / name).stat().st_ino for name in written} == written

    (folder / "small").write_bytes(b"changed by the worker")
    slots.give_back(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["big"]
    assert slots.take() == folder
    assert await write_inputs(backends, slots, {"t4": folder}, [again]) == {}
    assert (folder / "small").read_bytes() == SMALL


async def test_a_folder_keeps_a_bounded_number_of_inputs(tmp_path: Path) -> None:
    slots = TaskFolders(tmp_path / "slots")
    await slots.start()
    folder = slots.take()
    for index in range(KEPT_INPUTS + 1):
        (folder / f"input{index}").write_bytes(b"x")
        slots.wrote(folder, f"input{index}", b"blob%d" % index)
        slots.give_back(folder)
        assert slots.take() == folder
        kept = len(list(folder.iterdir()))
        assert kept == (index + 1 if index < KEPT_INPUTS else 0)
