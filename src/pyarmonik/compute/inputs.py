"""The payloads and inputs of a group of tasks, looked up together (both agent paths).

The batched path sends their bytes to its worker; the official path writes them as files
in each task's data folder, as ArmoniK's agent does. Either way one query finds every result
of the group, and the blobs stored in the database are read in one more.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyarmonik.compute.folders import TaskFolders
from pyarmonik.domain.records import Result, Task
from pyarmonik.scheduling.backends import Backends
from pyarmonik.storage.objects import ObjectNotFound, read_all
from pyarmonik.storage.objects.inline import InlineObjects, write_file


async def locate(backends: Backends, tasks: list[Task]) -> tuple[dict[str, bytes], set[str]]:
    """The opaque id of every payload and input of these tasks, by result id; and the result
    ids that have no data (unknown, or not completed)."""
    needed = list(dict.fromkeys(i for task in tasks for i in task.dependencies))
    async with backends.database.read() as repository:
        found = {r.result_id: r for r in await repository.find(Result, {"result_id": needed})}
    opaque = {i: found[i].opaque_id for i in needed if i in found and found[i].opaque_id}
    return opaque, {i for i in needed if i not in opaque}


async def read_inputs(backends: Backends, tasks: list[Task]) -> tuple[dict[str, bytes], set[str]]:
    """The data of every payload and input of these tasks, by result id; and the ids of those
    without data."""
    opaque, missing = await locate(backends, tasks)
    blobs = await _read(backends, list(set(opaque.values())))
    data = {i: blobs[o] for i, o in opaque.items() if o in blobs}
    return data, missing | {i for i in opaque if i not in data}


async def write_inputs(
    backends: Backends, slots: TaskFolders, folders: dict[str, Path], tasks: list[Task]
) -> dict[str, list[str]]:
    """Put the payload and inputs of each task in its folder (`folders` by task id, taken
    from `slots`), one file per result named by its id, unless the folder holds it already;
    returns, by task id, the inputs found without data.

    Blobs in the database are read in one query and written out; the others are the object
    storage's `get_file` (the file storage hard-links them: no copy)."""
    opaque, missing = await locate(backends, tasks)
    objects = backends.objects
    inline = objects if isinstance(objects, InlineObjects) else None
    wanted = {
        opaque[i]
        for task in tasks
        for i in task.dependencies
        if i in opaque and not slots.holds(folders[task.task_id], i, opaque[i])
    }
    small = {o for o in wanted if inline is not None and inline.is_inline(o)}
    blobs = await _read(backends, list(small)) if small else {}
    absent: dict[str, list[str]] = {}
    for task in tasks:
        if lacking := [i for i in dict.fromkeys(task.dependencies) if i in missing]:
            absent[task.task_id] = lacking

    async def put(task: Task, result_id: str) -> None:
        folder = folders[task.task_id]
        opaque_id = opaque[result_id]
        if slots.holds(folder, result_id, opaque_id):
            return
        data = blobs.get(opaque_id)
        try:
            if data is None and opaque_id in small:
                raise ObjectNotFound(result_id)
            if data is None:
                await objects.get_file(opaque_id, folder / result_id)
            else:
                await write_file(folder / result_id, data)
        except ObjectNotFound:  # deleted meanwhile
            absent.setdefault(task.task_id, []).append(result_id)
            return
        slots.wrote(folder, result_id, opaque_id)

    await asyncio.gather(
        *(
            put(task, result_id)
            for task in tasks
            if task.task_id not in absent
            for result_id in dict.fromkeys(task.dependencies)
        )
    )
    return absent


async def _read(backends: Backends, opaque_ids: list[bytes]) -> dict[bytes, bytes]:
    """The data of these blobs, by id; those not found are left out."""
    objects = backends.objects
    if isinstance(objects, InlineObjects):
        try:
            return await objects.read_many(opaque_ids)
        except ObjectNotFound:
            pass  # rare (a result deleted meanwhile): one by one, to know which

    async def one(opaque_id: bytes) -> tuple[bytes, bytes | None]:
        try:
            return opaque_id, await read_all(objects, opaque_id)
        except ObjectNotFound:
            return opaque_id, None

    pairs = await asyncio.gather(*(one(i) for i in opaque_ids))
    return {i: d for i, d in pairs if d is not None}
