"""The agent's task folders: emptied and reused, never shared by two tasks."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pyarmonik.compute.folders import MAX_SPARES, TaskFolders, unwritten


async def test_folders_are_emptied_and_reused(tmp_path: Path) -> None:
    (tmp_path / "tasks" / "slot-9").mkdir(parents=True)  # left by a previous life
    folders = TaskFolders(tmp_path / "tasks")
    await folders.start()
    assert [p.name for p in folders.root.iterdir()] == ["spare"]

    first, second = folders.take(), folders.take()
    assert first != second and first.is_dir() and second.is_dir()
    (first / "payload").write_bytes(b"data")
    (first / "output").write_bytes(b"")
    folders.give_back(first)
    again = folders.take()
    assert again == first and list(again.iterdir()) == []


async def test_a_folder_with_sub_folders_is_removed_not_reused(tmp_path: Path) -> None:
    folders = TaskFolders(tmp_path / "tasks")
    await folders.start()
    used = folders.take()
    (used / "made-by-the-worker").mkdir()
    (used / "made-by-the-worker" / "file").write_bytes(b"x")
    folders.give_back(used)
    fresh = folders.take()
    assert fresh != used and list(fresh.iterdir()) == []
    for _ in range(100):  # removed in a thread
        if not used.exists():
            break
        await asyncio.sleep(0.02)
    assert not used.exists()


async def test_outputs_reuse_the_files_of_earlier_outputs(tmp_path: Path) -> None:
    folders = TaskFolders(tmp_path / "tasks")
    await folders.start()
    first = folders.take()
    folders.place_outputs(first, ["out1"])  # no spare yet: nothing placed
    assert list(first.iterdir()) == []
    (first / "out1").write_bytes(b"secret of task 1")
    inode = os.stat(first / "out1").st_ino
    folders.retire(first / "out1")  # read by the agent: a spare now
    assert not (first / "out1").exists() and len(folders.spares) == 1

    second = folders.take()
    folders.place_outputs(second, ["out2", "out3"])  # one spare for two outputs
    placed = second / "out2"
    assert os.stat(placed).st_ino == inode and placed.read_bytes() == b""  # nothing of task 1
    assert unwritten(os.stat(placed)) and not (second / "out3").exists()
    with open(placed, "wb"):  # noqa: ASYNC230 - what the official SDKs do: create or truncate
        pass
    assert not unwritten(os.stat(placed))  # written, even empty
    assert os.stat(placed).st_ino == inode  # no inode was allocated


async def test_placed_outputs_never_written_go_back_to_the_spares(tmp_path: Path) -> None:
    folders = TaskFolders(tmp_path / "tasks")
    await folders.start()
    folder = folders.take()
    (folder / "made").write_bytes(b"x")
    folders.retire(folder / "made")
    folders.place_outputs(folder, ["out"])
    assert folders.spares == []
    folders.give_back(folder)
    assert len(folders.spares) == 1 and list(folder.iterdir()) == []


async def test_hard_links_and_spares_beyond_the_bound_are_removed(tmp_path: Path) -> None:
    folders = TaskFolders(tmp_path / "tasks")
    await folders.start()
    folder = folders.take()
    blob = tmp_path / "blob"
    blob.write_bytes(b"stored data")
    os.link(blob, folder / "input")  # as the file storage hands inputs over
    folders.retire(folder / "input")
    assert folders.spares == [] and not (folder / "input").exists()
    assert blob.read_bytes() == b"stored data"  # the stored blob is untouched
    for index in range(MAX_SPARES + 5):
        (folder / f"o{index}").write_bytes(b"")
        folders.retire(folder / f"o{index}")
    assert len(folders.spares) == MAX_SPARES == len(list((folders.root / "spare").iterdir()))
    assert list(folder.iterdir()) == []
