"""cancel_and_wait (aio.py): the task's cancellation is absorbed, the caller's is not."""

from __future__ import annotations

import asyncio

import pytest

from pyarmonik.aio import cancel_and_wait


async def test_the_task_ends_and_its_cancellation_is_absorbed() -> None:
    task = asyncio.create_task(asyncio.sleep(30))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_what_the_task_raised_on_its_way_out_is_raised() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise ValueError("cleanup failed") from None

    task = asyncio.create_task(fails_when_cancelled())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="cleanup failed"):
        await cancel_and_wait(task)


async def test_the_callers_cancellation_still_ends_the_caller() -> None:
    release = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await release.wait()  # a long cleanup

    task = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not task.done()  # the caller stopped waiting; the task's cleanup goes on
    release.set()
    await task


async def test_none_is_nothing_to_cancel() -> None:
    await cancel_and_wait(None)
