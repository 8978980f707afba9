"""An agent killed between any two steps of a task's post-processing (pyarmonik/faults.py): a
second agent finishes the session, every task ends as it should with the right outputs, none
completes twice, and the dead attempt leaves no blob behind."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions
from armonik.common import ResultStatus, TaskOptions, TaskStatus

from pyarmonik.faults import POINTS, VARIABLE
from tests.helpers import (
    EMBEDDED,
    OFFICIAL_WORKER,
    PG_RABBIT_REDIS,
    all_tasks,
    cluster_backends,
    control_plane,
    session_finished,
    submit_orders,
)
from tests.processes import pyarmonik

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=3)
# A fan-out whose output is handed over to an aggregation of its two children (1 + 2), and a
# task that fails: between them they go through every crash point.
ORDERS = [{"kind": "fanout", "n": 2}, {"kind": "error", "message": "on purpose"}]


def referenced_blobs(channel: grpc.Channel, session_id: str) -> set[str]:
    results = ArmoniKResults(channel)
    _, listed = results.list_results(page_size=1000)
    return {r.opaque_id.decode() for r in listed if r.opaque_id}


@pytest.mark.parametrize(
    "backend", [EMBEDDED, pytest.param(PG_RABBIT_REDIS, marks=pytest.mark.cluster)]
)
@pytest.mark.parametrize("point", POINTS)
def test_agent_killed_at_a_crash_point(tmp_path: Path, backend: str, point: str) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        cluster_backends(backend, partitions=["default"]) as backends,
        control_plane(tmp_path / "data", ("default",), backends=backends) as plane,
        grpc.insecure_channel(plane.endpoint) as channel,
    ):
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        _, (tree_output, error_output) = submit_orders(channel, session_id, ORDERS)

        def agent(name: str) -> list[str]:
            return [
                "agent",
                "--worker", OFFICIAL_WORKER,
                "--work-dir", str(tmp_path / name),
                "--data-dir", str(tmp_path / "data"),
                "--lease", "2",
                *backends.cli_args(),
            ]  # fmt: skip

        with pyarmonik("doomed", agent("doomed"), logs, env={VARIABLE: point}) as doomed:
            doomed.wait(60)
            assert doomed.returncode == -signal.SIGKILL, (logs / "doomed.log").read_text()[-2000:]
        with pyarmonik("rescuer", agent("rescuer"), logs):
            deadline = time.monotonic() + 90
            while not session_finished(channel, session_id):
                assert time.monotonic() < deadline, (logs / "rescuer.log").read_text()[-3000:]
                time.sleep(0.2)

        results = ArmoniKResults(channel)
        assert results.download_result_data(tree_output, session_id) == b"3"
        assert results.get_result(error_output).status == ResultStatus.ABORTED
        tasks = all_tasks(channel, session_id)
        assert {t.status for t in tasks} <= {
            TaskStatus.COMPLETED,
            TaskStatus.RETRIED,
            TaskStatus.ERROR,
        }
        completed = Counter(t.initial_task_id for t in tasks if t.status == TaskStatus.COMPLETED)
        assert set(completed.values()) == {1}, "no task completed twice"
        assert len(completed) == 4  # the fan-out, its two children and their aggregation
        assert [t.status for t in tasks].count(TaskStatus.ERROR) == 1
        if backend == EMBEDDED:  # the blobs of a dead attempt are gone (files and rows)
            data = tmp_path / "data"
            stored = {p.name for p in (data / "objects").iterdir() if p.is_file()}
            with contextlib.closing(sqlite3.connect(data / "pyarmonik.db")) as database:
                rows = database.execute("SELECT opaque_id FROM objects").fetchall()
            stored |= {bytes(row[0]).decode() for row in rows}
            assert stored == referenced_blobs(channel, session_id)
