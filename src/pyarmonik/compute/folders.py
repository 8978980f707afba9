"""The private data folders of the tasks an agent holds (ArmoniK's shared data folder).

A folder is emptied and reused from task to task rather than removed and made anew: on a
disk file system each of those is a metadata update, and the agent handles hundreds of
tasks a second. Emptying a folder of a few small files is done on the loop; a folder the
worker filled with more than files goes to a thread and is not reused.

The input files (payload, data dependencies) of a task stay in its folder when it is given
back, up to KEPT_INPUTS of them: a result's data never changes once written, so the next
task of that folder that needs the same input (tasks sharing a payload or common data) finds
it there and nothing is written. A kept file is used again only if it is the one written for
that very blob, unchanged since (same inode, size and modification time): a worker that
wrote into it, or replaced it, makes it be written anew. Making and removing a file per task
was about a tenth of an agent's CPU on a disk file system (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

# Input files a free folder keeps at most; beyond, all are removed.
KEPT_INPUTS = 8

# What identifies an input file as written: the blob's opaque id, then the file's inode,
# size and modification time (ns).
Written = tuple[bytes, int, int, int]


def _written(path: Path, opaque_id: bytes) -> Written:
    status = os.stat(path, follow_symlinks=False)
    return opaque_id, status.st_ino, status.st_size, status.st_mtime_ns


def _empty(folder: Path, keep: dict[str, Written]) -> bool:
    """Remove the files of a folder but the inputs in `keep` that are still as written (those
    that are not are dropped from `keep`); False when it holds a sub-folder (left as is)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return False
            kept = keep.get(entry.name)
            if kept is not None:
                status = entry.stat(follow_symlinks=False)
                if kept[1:] == (status.st_ino, status.st_size, status.st_mtime_ns):
                    continue
                del keep[entry.name]
            os.unlink(entry.path)
    return True


class TaskFolders:
    def __init__(self, root: Path):
        self.root = root
        self._free: list[Path] = []
        self._made = 0
        self._inputs: dict[Path, dict[str, Written]] = {}  # input files of each folder

    def holds(self, folder: Path, name: str, opaque_id: bytes) -> bool:
        """Whether `folder` holds input `name` as written from blob `opaque_id`."""
        written = self._inputs.get(folder, {}).get(name)
        if written is None or written[0] != opaque_id:
            return False
        try:
            return _written(folder / name, opaque_id) == written
        except OSError:
            return False

    def wrote(self, folder: Path, name: str, opaque_id: bytes) -> None:
        """Input `name` was written into `folder` from blob `opaque_id`."""
        with contextlib.suppress(OSError):
            self._inputs.setdefault(folder, {})[name] = _written(folder / name, opaque_id)

    async def start(self) -> None:
        """Start empty: what a previous life of the agent left is removed."""
        await asyncio.to_thread(shutil.rmtree, self.root, True)
        self.root.mkdir(parents=True, exist_ok=True)

    def take(self) -> Path:
        """An empty folder for a task."""
        if self._free:
            return self._free.pop()
        self._made += 1
        folder = self.root / f"slot-{self._made}"
        folder.mkdir()
        return folder

    def give_back(self, folder: Path) -> None:
        """The task is done with its folder: empty it (but its inputs) for the next one."""
        keep = self._inputs.get(folder, {})
        if len(keep) > KEPT_INPUTS:
            keep.clear()
        try:
            if _empty(folder, keep):
                self._free.append(folder)
                return
        except FileNotFoundError:
            return
        except OSError:
            pass
        # Not reused: removed in a thread (its name is never handed out again).
        self._inputs.pop(folder, None)
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, folder, True)
