"""The write lock of the processes sharing one SQLite file, waited for in the kernel.

SQLite's own lock cannot be waited for without blocking the event loop (its busy handler
sleeps in the calling thread), so a busy lock was polled: with dozens of agents, thousands
of failed attempts a second, each one a wake-up of a process that then burns the CPU the
lock holder needs (docs/performance.md). Instead, a process takes an exclusive `flock` on a
file beside the database (`<db file>.wlock`) before `BEGIN IMMEDIATE` and drops it after its
COMMIT or ROLLBACK: uncontended, one system call on the loop; contended, a thread of ours
sleeps in `flock` until the holder is done (the kernel queues the waiters and wakes one at
a time), and `BEGIN IMMEDIATE` then succeeds at the first try. SQLite's lock still guards
the file; this one only keeps our own writers from polling for it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path


class WriteLock:
    """One process's side of the lock (one per database instance: a single writer)."""

    def __init__(self, database_path: str | Path):
        self.path = Path(f"{database_path}.wlock")
        self._fd = -1
        self.held = False
        self.waits = 0  # acquisitions that had to wait (tests and benches look at it)
        self._executor: ThreadPoolExecutor | None = None
        self._abandoned: asyncio.Future[None] | None = None  # a wait whose caller left

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    async def acquire(self) -> None:
        if self._abandoned is not None:  # it releases the lock as soon as it gets it
            with suppress(Exception):
                await asyncio.shield(self._abandoned)
            self._abandoned = None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await self._wait()
        self.held = True

    async def _wait(self) -> None:
        self.waits += 1
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-write-lock")
        loop = asyncio.get_running_loop()
        waiting = loop.run_in_executor(self._executor, fcntl.flock, self._fd, fcntl.LOCK_EX)
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread will get the lock all the same: give it back then.
            self._abandoned = waiting
            waiting.add_done_callback(self._release_abandoned)
            raise

    def _release_abandoned(self, waiting: asyncio.Future[None]) -> None:
        if not waiting.cancelled() and waiting.exception() is None and not self.held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def held_in_thread(self) -> Iterator[None]:
        """Hold the lock for a block that runs in a thread (it blocks until the lock is free).
        On a descriptor of its own: `flock` excludes descriptors, not threads, and on ours the
        thread would share the lock with the loop's writers."""
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # which unlocks it

    def release(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
