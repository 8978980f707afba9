"""Fair share between sessions, end to end: two applications on one partition at the same
priority, through `pyarmonik local` and the official client and worker (issue 14, item 4).

Session A submits 400 tasks of 10 ms, then session B 20. With `queue_order: fair` (the
default) B's tasks are served in turn with A's and complete while A still has more than half
of its tasks to run; with `queue_order: fifo` (set in the config file, which `local` hands to
its agents) B waits behind A, as in ArmoniK.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskStatus

from tests.e2e.test_official_worker import OPTIONS
from tests.helpers import (
    EMBEDDED,
    PG_RABBIT_REDIS,
    PG_TABLE_S3,
    cluster_backends,
    local_cluster,
    submit_orders,
)

pytestmark = pytest.mark.timeout(180)

A_TASKS, B_TASKS = 400, 20
SLEEP = {"kind": "sleep", "seconds": 0.01}


def completed(tasks: ArmoniKTasks, session_id: str) -> int:
    counts = tasks.count_tasks_by_status(Task.session_id == session_id)
    return counts.get(TaskStatus.COMPLETED, 0)


def a_left_when_b_is_done(data_dir: Path, backend: str, order: str) -> int:
    """Run the scenario; how many of A's tasks were not completed yet when B's all were."""
    config = data_dir / "config.yaml"
    config.write_text(f"queue_order: {order}\n")
    with (
        cluster_backends(backend, partitions=["default"]) as backends,
        local_cluster(data_dir, "--config", str(config), agents=2, backends=backends) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
    ):
        sessions, tasks = ArmoniKSessions(channel), ArmoniKTasks(channel)
        a, b = sessions.create_session(OPTIONS), sessions.create_session(OPTIONS)
        submit_orders(channel, a, [SLEEP] * A_TASKS, batch=A_TASKS)
        submit_orders(channel, b, [SLEEP] * B_TASKS)
        deadline = time.monotonic() + 120
        while completed(tasks, b) < B_TASKS:
            assert time.monotonic() < deadline, "B's tasks did not complete in 120 s"
            time.sleep(0.05)
        return A_TASKS - completed(tasks, a)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(EMBEDDED, id=EMBEDDED),
        pytest.param(PG_RABBIT_REDIS, id=PG_RABBIT_REDIS, marks=pytest.mark.cluster),
        pytest.param(PG_TABLE_S3, id=PG_TABLE_S3, marks=pytest.mark.cluster),
    ],
)
def test_a_small_session_completes_while_the_big_one_has_most_left(
    backend: str, tmp_path: Path
) -> None:
    left = a_left_when_b_is_done(tmp_path, backend, "fair")
    assert left > A_TASKS / 2


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(EMBEDDED, id=EMBEDDED),
        pytest.param(PG_RABBIT_REDIS, id=PG_RABBIT_REDIS, marks=pytest.mark.cluster),
    ],
)
def test_strict_fifo_when_asked(backend: str, tmp_path: Path) -> None:
    # B's tasks are taken only once A's are all out of the queue: what remains of A then is
    # what the two agents hold or run (a few each), and what ended while B's polls ran.
    left = a_left_when_b_is_done(tmp_path, backend, "fifo")
    assert left < A_TASKS / 10
