"""An agent killed with SIGKILL mid-session: its tasks are recovered, none runs to completion
twice, and every output is right."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import grpc
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskDefinition, TaskOptions, TaskStatus

from tests.helpers import local_cluster
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
        outputs = results.create_results_metadata(
            [f"o{i}" for i in range(count)], session_id, batch_size=500
        )
        payloads = results.create_results(
            {
                f"p{i}": json.dumps({"kind": "value", "value": i * 3, "sleep": 0.01}).encode()
                for i in range(count)
            },
            session_id,
            batch_size=500,
        )
        tasks.submit_tasks(
            session_id,
            [
                TaskDefinition(
                    payload_id=payloads[f"p{i}"].result_id,
                    expected_output_ids=[outputs[f"o{i}"].result_id],
                )
                for i in range(count)
            ],
            chunk_size=500,
        )
        while (
            tasks.count_tasks_by_status(Task.session_id == session_id).get(TaskStatus.COMPLETED, 0)
            < 50
        ):
            time.sleep(0.05)
        victim = agent_pids(cluster.process.pid)[0]
        os.kill(victim, signal.SIGKILL)

        ArmoniKEvents(channel).wait_for_result_availability(
            [outputs[f"o{i}"].result_id for i in range(count)], session_id
        )
        for i in range(count):
            assert (
                results.download_result_data(outputs[f"o{i}"].result_id, session_id)
                == str(i * 3).encode()
            )
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
