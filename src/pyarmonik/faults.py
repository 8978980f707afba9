"""Crash points: the agent killed between two steps of a task's post-processing, on demand.

`PYARMONIK_CRASH_AT=<point>` makes a process SIGKILL itself the first time it reaches that
point (`<point>:<n>`: the n-th time). Tests walk every point and check that the task still ends
right, with the right outputs (tests/e2e/test_crash_points.py). Unset, as always outside those
tests, a crash point costs one comparison.
"""

from __future__ import annotations

import os
import signal
import sys

# In the order a task's post-processing reaches them.
POINTS = (
    # Outputs are in object storage, nothing is committed yet.
    "before_complete",
    # Inside the completion's transaction, everything written but the task's own status.
    "complete_in_transaction",
    # The completion is committed; tasks it made ready are not pushed to a broker yet.
    "complete_committed",
    # Ready tasks pushed; the message of the task not yet acknowledged (broker queues).
    "complete_pushed",
    # The failure of an attempt (an error Output) is committed, ready retries not pushed.
    "fail_committed",
)
VARIABLE = "PYARMONIK_CRASH_AT"


def _armed() -> tuple[str | None, int]:
    value = os.environ.get(VARIABLE, "")
    if not value:
        return None, 0
    point, _, count = value.partition(":")
    if point not in POINTS or (count and not count.isdigit()):
        sys.exit(f"error: {VARIABLE}={value!r}: expected one of {', '.join(POINTS)}[:<n>]")
    return point, int(count or 1)


_target, _countdown = _armed()


def crash_point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) if this is the armed point, reached the n-th time."""
    global _countdown
    if name != _target:
        return
    _countdown -= 1
    if _countdown == 0:
        os.kill(os.getpid(), signal.SIGKILL)
