"""An agent killed with SIGKILL mid-session: its tasks are recovered, none runs to completion
twice, and every output is right."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import grpc
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import ResultStatus, Task, TaskOptions, TaskStatus

from tests.helpers import local_cluster, submit_orders
from tests.processes import agent_pids

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=3)


def test_kill_one_of_two_agents_mid_session(tmp_path: Path) -> None:
    with (
        local_cluster(tmp_path, "--lease", "3") as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
    ):
        assert cluster.process is not None
        deadline = time.monotonic() + 30
        while len(agent_pids(cluster.process.pid)) < 2:
            assert time.monotonic() < deadline, "agents did not start"
            time.sleep(0.1)
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        results, tasks = ArmoniKResults(channel), ArmoniKTasks(channel)
        count = 500
        orders = [{"kind": "value", "value": i * 3, "sleep": 0.01} for i in range(count)]
        _, output_ids = submit_orders(channel, session_id, orders)
        while (
            tasks.count_tasks_by_status(Task.session_id == session_id).get(TaskStatus.COMPLETED, 0)
            < 50
        ):
            time.sleep(0.05)
        victim = agent_pids(cluster.process.pid)[0]
        os.kill(victim, signal.SIGKILL)

        ArmoniKEvents(channel).wait_for_result_availability(output_ids, session_id)
        for i in range(count):
            assert results.download_result_data(output_ids[i], session_id) == str(i * 3).encode()
        listed: list[Task] = []
        page = 0
        while True:
            total, chunk = tasks.list_tasks(
                Task.session_id == session_id, page=page, page_size=1000
            )
            listed += chunk
            if len(listed) >= total:
                break
            page += 1
        completed = Counter(t.initial_task_id for t in listed if t.status == TaskStatus.COMPLETED)
        assert len(completed) == count and set(completed.values()) == {1}, (
            "each task completed exactly once"
        )
        assert all(t.status in (TaskStatus.COMPLETED, TaskStatus.RETRIED) for t in listed)


def test_deleting_a_session_of_failing_tasks_stalls_no_agent(tmp_path: Path) -> None:
    """Tasks whose session is deleted while they run are dropped at once by their agent: the
    agents go on with other sessions' tasks (they used to retry each one for two minutes)."""
    with (
        local_cluster(tmp_path) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
    ):
        sessions, tasks = ArmoniKSessions(channel), ArmoniKTasks(channel)
        doomed = sessions.create_session(OPTIONS)
        orders = [{"kind": "error", "sleep": 0.05} for _ in range(300)]
        submit_orders(channel, doomed, orders)
        while not tasks.count_tasks_by_status(Task.session_id == doomed).get(TaskStatus.ERROR):
            time.sleep(0.02)
        sessions.delete_session(doomed)

        session_id = sessions.create_session(OPTIONS)
        _, (output_id,) = submit_orders(channel, session_id, [{"kind": "upper", "text": "ok"}])
        # A bound on a hang, not a speed: a stalled agent took two minutes per task.
        deadline = time.monotonic() + 60
        results = ArmoniKResults(channel)
        while results.get_result(output_id).status != ResultStatus.COMPLETED:
            assert time.monotonic() < deadline, "the agents stalled on the deleted session"
            time.sleep(0.1)
        assert results.download_result_data(output_id, session_id) == b"OK"
