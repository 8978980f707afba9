"""gRPC only while the worker is used: an idle agent keeps no channel and no server, so that
gRPC stops its threads (issue 14: what idle agents cost).

Why: as long as a process holds a gRPC channel or server, gRPC's C-core keeps threads that
wake several times a second with nothing to do. Its event engine looks at each shard of its
timer list at least once a second (2 shards per core, each at its own phase once timers have
been used), and each look hands a closure to its thread pool, which wakes one more thread;
the pool's lifeguard and iomgr's timer thread wake every second too. That is about 10
wake-ups a second per agent, 3.5% of a core for 64 idle agents on 2 cores. No setting changes
those periods (they are constants of gRPC's source, not environment variables, experiments or
channel arguments). Once a process has closed its last channel and server, gRPC shuts down
and its threads exit; the next channel or server starts them again.

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
