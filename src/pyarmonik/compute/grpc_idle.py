"""The link to the worker only while it is used: an idle agent keeps no channel and no Agent
API server, and the official worker it started is paused (issue 14: what idle agents cost).

Why: the official Python worker's gRPC server polls ten times a second while it waits; a
paused (SIGSTOP) worker costs nothing, and a worker is paused only once nothing of ours talks
to it. The agent's side of the link used to be grpcio, whose C-core keeps threads waking
several times a second as long as a process holds a channel or server (its timer shards, its
thread pool's lifeguard): closing both let gRPC stop them. The link is now compute/
lean_grpc.py (plain asyncio: nothing wakes while idle), and the close remains the pause's cue.

So the agent's channel to its worker and its Agent API server are closed together after
IDLE_CLOSE seconds without a call to the worker, and opened again for the next one. The
worker's own connection to the Agent API drops meanwhile; its next call (during the next
task, once the server is back) connects again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

# Seconds without a worker call after which gRPC is closed. Opening again costs the first
# task after such a pause a few ms, and the agent about 5 ms of CPU with the close; idle, gRPC
# cost it about 0.5 ms of CPU a second: a pause of ~15 s or more saves CPU, a busy agent never
# closes.
IDLE_CLOSE = 5.0


class IdleCloser:
    """Runs `close` once gRPC has been unused for `seconds`: never while a use is under way
    (`begin`..`end`), and with one timer at most (none while busy), so that a busy agent pays
    a counter and an idle one a single wake-up."""

    def __init__(self, seconds: float, close: Callable[[], Coroutine[Any, Any, None]]):
        self.seconds = seconds
        self._close = close
        self._uses = 0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None  # held: a task nobody holds may vanish

    def begin(self) -> None:
        self._uses += 1

    def end(self, *_: object) -> None:
        """A use is over (also a gRPC call's done callback, hence the ignored argument)."""
        self._uses -= 1
        self.touch()

    def touch(self) -> None:
        """Used just now: the countdown starts again."""
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        if self._uses == 0 and self._timer is None:
            self._timer = loop.call_later(self.seconds, self._check)

    def expired(self) -> bool:
        """Unused, and for long enough."""
        loop = asyncio.get_running_loop()
        return self._uses == 0 and loop.time() - self._last >= self.seconds

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._uses:
            return  # `end` starts the countdown again
        loop = asyncio.get_running_loop()
        left = self._last + self.seconds - loop.time()
        if left > 0:  # used since the timer was set: one timer for the rest of the wait
            self._timer = loop.call_later(left, self._check)
        elif self._closing is None or self._closing.done():
            self._closing = loop.create_task(self._close())
