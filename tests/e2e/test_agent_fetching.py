"""The agent's fetch stage: while tasks are short it holds a window of them ahead of the
worker, started with their pull; behind a long task that window is given back for other
agents and shrinks to one task, acquired but not started."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import grpc
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskOptions, TaskStatus

from tests.helpers import local_cluster, submit_orders

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=1)
LONG = 3.0  # seconds; the reserve is held 0.2 s at most behind it


def test_behind_a_long_task_only_the_prepared_one_stays_held(tmp_path: Path) -> None:
    """One agent: the window grows as the first tasks prove short; once T5 (long) has run
    past the hold, what was taken after it is back in the queue but one task, DISPATCHED
    (prepared, not started), and the rest of the session is SUBMITTED."""
    with (
        local_cluster(tmp_path, agents=1) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
    ):
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        results, tasks = ArmoniKResults(channel), ArmoniKTasks(channel)
        orders: list[dict[str, object]] = [{"kind": "value", "value": i} for i in range(12)]
        orders[5] = {"kind": "value", "value": 5, "sleep": LONG}
        task_ids, output_ids = submit_orders(channel, session_id, orders)
        deadline = time.monotonic() + 30
        while tasks.get_task(task_ids[5]).status != TaskStatus.PROCESSING:
            assert time.monotonic() < deadline, "the long task did not start"
            time.sleep(0.05)
        time.sleep(1.0)  # well past the reserve's hold, well before the long task ends
        counts = tasks.count_tasks_by_status(Task.session_id == session_id)
        assert counts.get(TaskStatus.PROCESSING) == 1, counts
        assert counts.get(TaskStatus.DISPATCHED) == 1, f"only T6 is held: {counts}"
        assert counts.get(TaskStatus.SUBMITTED) == 5, f"T7 given back, T8-T11 untouched: {counts}"
        ArmoniKEvents(channel).wait_for_result_availability(output_ids, session_id)
        for i, output_id in enumerate(output_ids):
            assert results.download_result_data(output_id, session_id) == str(i).encode()


def test_short_tasks_are_taken_and_started_a_window_at_a_time(tmp_path: Path) -> None:
    """One agent, 200 short tasks of the official worker: once the first have shown they are
    short, tasks are acquired and started several in one transaction (they share their
    acquisition and start stamps), and each still runs once, in its own Process call."""
    with (
        local_cluster(tmp_path, agents=1) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
    ):
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        results, tasks = ArmoniKResults(channel), ArmoniKTasks(channel)
        orders: list[dict[str, object]] = [{"kind": "value", "value": i} for i in range(200)]
        task_ids, output_ids = submit_orders(channel, session_id, orders)
        ArmoniKEvents(channel).wait_for_result_availability(output_ids, session_id)
        details = [tasks.get_task(task_id) for task_id in task_ids]
        assert all(t.status == TaskStatus.COMPLETED for t in details)
        assert all(not t.retry_of_ids for t in details), "no task ran twice"
        together: dict[object, int] = {}
        for task in details:
            together[(task.acquired_at, task.started_at)] = (
                together.get((task.acquired_at, task.started_at), 0) + 1
            )
        assert max(together.values()) >= 2, "every task was started on its own"
        for i, output_id in enumerate(output_ids):
            assert results.download_result_data(output_id, session_id) == str(i).encode()
