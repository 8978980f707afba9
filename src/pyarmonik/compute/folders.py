"""The private data folders of the tasks an agent holds (ArmoniK's shared data folder).

A folder is emptied and reused from task to task rather than removed and made anew: on a
disk file system each of those is a metadata update, and the agent handles hundreds of
tasks a second. Emptying a folder of a few small files is done on the loop; a folder the
worker filled with more than files goes to a thread and is not reused.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path


def _empty(folder: Path) -> bool:
    """Remove the files of a folder; False when it holds a sub-folder (left as it is)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return False
            os.unlink(entry.path)
    return True


class TaskFolders:
    def __init__(self, root: Path):
        self.root = root
        self._free: list[Path] = []
        self._made = 0

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
        """The task is done with its folder: empty it for the next one."""
        try:
            if _empty(folder):
                self._free.append(folder)
                return
        except FileNotFoundError:
            return
        except OSError:
            pass
        # Not reused: removed in a thread (its name is never handed out again).
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, folder, True)
