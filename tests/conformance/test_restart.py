"""State survives a restart of the control plane: `pyarmonik control` as a real process,
stopped with SIGTERM and started again on the same data directory."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import grpc
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import (
    Result,
    ResultStatus,
    SessionStatus,
    Task,
    TaskDefinition,
    TaskOptions,
    TaskStatus,
)

from tests.conformance.support import submit_one
from tests.helpers import free_port

PYARMONIK = str(Path(sys.executable).parent / "pyarmonik")


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"control plane exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never accepted connections")


@contextmanager
def control_process(port: int, data_dir: Path) -> Iterator[grpc.Channel]:
    """`pyarmonik control` serving `data_dir` on `port`; SIGTERM on exit (must exit cleanly)."""
    process = subprocess.Popen(
        [
            PYARMONIK,
            "control",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--partition",
            "default",
            "--partition",
            "other",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, process)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, errors = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, errors.decode(errors="replace")


def test_state_survives_a_restart(tmp_path: Path) -> None:
    port = free_port()
    options = TaskOptions(
        timedelta(seconds=42), priority=4, max_retries=3, application_name="restart"
    )
    with control_process(port, tmp_path) as channel:
        sessions, results, tasks = (
            ArmoniKSessions(channel),
            ArmoniKResults(channel),
            ArmoniKTasks(channel),
        )
        session_id = sessions.create_session(options, partition_ids=["default", "other"])
        ready = submit_one(results, tasks, session_id)
        waiting = submit_one(results, tasks, session_id, payload=None)
        chained = submit_one(results, tasks, session_id, dependencies=ready.output_ids)
        doomed = submit_one(results, tasks, session_id)
        tasks.cancel_tasks([doomed.task_id])
        data = results.create_results({"data": b"kept across restarts"}, session_id)["data"]
        closed = sessions.create_session(options)
        sessions.close_session(closed)
        before = {t.id: t for t in tasks.list_tasks(Task.session_id == session_id)[1]}

    with control_process(port, tmp_path) as channel:
        sessions, results, tasks = (
            ArmoniKSessions(channel),
            ArmoniKResults(channel),
            ArmoniKTasks(channel),
        )
        session = sessions.get_session(session_id)
        assert session.status == SessionStatus.RUNNING
        assert sorted(session.partition_ids) == ["default", "other"]
        assert session.options.application_name == "restart"
        assert session.options.max_duration == timedelta(seconds=42)
        assert sessions.get_session(closed).status == SessionStatus.CLOSED

        after = {t.id: t for t in tasks.list_tasks(Task.session_id == session_id)[1]}
        assert after.keys() == before.keys()
        for task_id, task in before.items():
            assert after[task_id].status == task.status
            assert after[task_id].options == task.options
            assert after[task_id].expected_output_ids == task.expected_output_ids
            assert after[task_id].created_at == task.created_at
        assert after[ready.task_id].status == TaskStatus.SUBMITTED
        assert after[waiting.task_id].status == TaskStatus.PENDING
        assert after[doomed.task_id].status == TaskStatus.CANCELLED
        assert results.get_result(doomed.output_ids[0]).status == ResultStatus.ABORTED
        assert results.download_result_data(data.result_id, session_id) == (b"kept across restarts")
        assert results.get_owner_task_id(ready.output_ids, session_id) == {
            ready.output_ids[0]: ready.task_id
        }
        total, _ = results.list_results(Result.session_id == session_id, page_size=0)
        assert total == 2 * 4 + 1  # a payload and an output per task, and the data

        # The dependency graph survived too: completing inputs still releases tasks.
        results.upload_result_data(waiting.payload_id, session_id, b"late payload")
        assert tasks.get_task(waiting.task_id).status == TaskStatus.SUBMITTED
        results.upload_result_data(ready.output_ids[0], session_id, b"as if computed")
        assert tasks.get_task(chained.task_id).status == TaskStatus.SUBMITTED
        # And the events snapshot serves the restored state.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(
                ArmoniKEvents(channel).wait_for_result_availability,
                [data.result_id, ready.output_ids[0]],
                session_id,
            ).result(timeout=30)
        # New work is accepted as before.
        payload = results.create_results({"p": b"p"}, session_id)["p"].result_id
        out = results.create_results_metadata(["o"], session_id)["o"].result_id
        (task,) = tasks.submit_tasks(
            session_id, [TaskDefinition(payload_id=payload, expected_output_ids=[out])]
        )
        assert tasks.get_task(task.id).status == TaskStatus.SUBMITTED
