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

Output files are recycled too. Before a task runs, each expected output's name is given an
empty file of an earlier task (a spare, renamed into the folder, modification time 0): the
worker's open for writing truncates it (as every official SDK opens: create or truncate),
so no inode is allocated, and once the agent has read an output the file becomes a spare
again instead of being unlinked. On ext4 without a journal a create skips every inode freed
in the last minute or more (`recently_deleted`), one look per inode: at a thousand outputs a
second, create + unlink grew dearer the longer the agent ran, and any other program's mass
deletion made it dearer still. A placed file the worker never wrote keeps modification time
0: the agent takes it for absent (NotifyResultData answers NOT_FOUND, as with no file).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
from pathlib import Path

# Input files a free folder keeps at most; beyond, all are removed.
KEPT_INPUTS = 8
# Spare output files kept at most (one per task in the agent's hands is enough).
MAX_SPARES = 64
# The modification time (ns) of a spare: a file still at it was not written since placed.
UNWRITTEN = 0

# What identifies an input file as written: the blob's opaque id, then the file's inode,
# size and modification time (ns).
Written = tuple[bytes, int, int, int]


def _written(path: Path, opaque_id: bytes) -> Written:
    status = os.stat(path, follow_symlinks=False)
    return opaque_id, status.st_ino, status.st_size, status.st_mtime_ns


def unwritten(status: os.stat_result) -> bool:
    """Whether a file (as `os.stat` found it) is a placed output the worker has not written."""
    return status.st_mtime_ns == UNWRITTEN and status.st_size == 0


class TaskFolders:
    def __init__(self, root: Path):
        self.root = root
        self._free: list[Path] = []
        self._made = 0
        self._inputs: dict[Path, dict[str, Written]] = {}  # input files of each folder
        self.spares: list[Path] = []  # empty files in root/spare, for outputs
        self._spare_names = 0

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
        (self.root / "spare").mkdir(parents=True)

    def place_outputs(self, folder: Path, names: list[str]) -> None:
        """Give each output name of a task a spare file, while there are spares (see the
        module's docstring)."""
        for name in names:
            if not self.spares:
                return
            spare = self.spares.pop()
            try:
                os.rename(spare, folder / name)  # a name taken already is replaced (no input is)
            except OSError:
                continue

    def retire(self, path: Path) -> None:
        """Done with this file of a task's folder (its content was read): it becomes a spare,
        or is removed (a hard link to a stored blob, or spares enough)."""
        try:
            status = os.stat(path, follow_symlinks=False)
            if (
                len(self.spares) >= MAX_SPARES
                or status.st_nlink != 1
                or not stat.S_ISREG(status.st_mode)
            ):
                os.unlink(path)
                return
            if status.st_size:
                os.truncate(path, 0)
            os.utime(path, ns=(UNWRITTEN, UNWRITTEN))
            self._spare_names += 1
            spare = self.root / "spare" / str(self._spare_names)
            try:
                os.rename(path, spare)
            except OSError:  # no spare folder (not started): removed after all
                os.unlink(path)
                return
            self.spares.append(spare)
        except FileNotFoundError:
            return

    def _empty(self, folder: Path, keep: dict[str, Written]) -> bool:
        """Remove the files of a folder but the inputs in `keep` that are still as written
        (those that are not are dropped from `keep`), files made spares while spares are
        wanted; False when it holds a sub-folder (left as is)."""
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
                self.retire(Path(entry.path))
        return True

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
            if self._empty(folder, keep):
                self._free.append(folder)
                return
        except FileNotFoundError:
            return
        except OSError:
            pass
        # Not reused: removed in a thread (its name is never handed out again).
        self._inputs.pop(folder, None)
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, folder, True)
