"""asyncio helpers the servers share."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait for its end; raise what it raised, unless its cancellation.

    Unlike `task.cancel()` then `await task` under `suppress(CancelledError)`, a
    cancellation of the caller itself is not swallowed: the caller's own timeout or shutdown
    still ends it even if the task is slow to end.
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled():
        task.result()
