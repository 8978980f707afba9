"""The agent's fetch stage: while tasks are short it takes two at a time, one prepared and
one in reserve; behind a long task the reserve is given back at once for other agents."""

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
    """One agent, so the pulls are deterministic: T0 and T1 one at a time (no task has run
    yet), then two at a time as each odd task starts, [T2, T3], [T4, T5]: T5, long, starts
    with T4 done and pulls [T6, T7], T6 prepared and T7 in reserve."""
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
