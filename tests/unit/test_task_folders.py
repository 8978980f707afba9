"""The agent's task folders: emptied and reused, never shared by two tasks."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyarmonik.compute.folders import TaskFolders


async def test_folders_are_emptied_and_reused(tmp_path: Path) -> None:
    (tmp_path / "tasks" / "slot-9").mkdir(parents=True)  # left by a previous life
    folders = TaskFolders(tmp_path / "tasks")
    await folders.start()
    assert list(folders.root.iterdir()) == []

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
