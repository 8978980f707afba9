"""The file object storage cleans up after writers killed mid-write: a process killed with
SIGKILL while it streams a blob leaves its temporary file, which the next start of the
storage (any control plane or agent on this host) deletes; a live writer's file stays."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pyarmonik.storage.objects.files import FileStorage

# A writer that streams a blob slowly, so that it can be killed in the middle.
WRITER = """
import asyncio, sys
from pyarmonik.storage.objects.files import FileStorage

async def slowly():
    for _ in range(1000):
        yield b"x" * (256 * 1024)
        await asyncio.sleep(0.05)

async def main():
    storage = FileStorage(sys.argv[1])
    await storage.start()
    await storage.put(slowly())

asyncio.run(main())
"""


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def test_a_killed_writer_leaves_nothing_after_the_next_start(tmp_path: Path) -> None:
    folder = tmp_path / "objects"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder)]) for _ in range(2)]
    deadline = time.monotonic() + 30
    while len(temporary_files(folder) if folder.exists() else []) < 2:
        assert time.monotonic() < deadline, "the writers did not start writing"
        time.sleep(0.05)
    killed, alive = writers
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    try:
        asyncio.run(FileStorage(folder).start())
        left = temporary_files(folder)
        assert len(left) == 1 and f"-{alive.pid}." in left[0].name  # the live writer's
    finally:
        alive.kill()
        alive.wait()
    asyncio.run(FileStorage(folder).start())
    assert temporary_files(folder) == []
