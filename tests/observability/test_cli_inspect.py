"""`pyarmonik sessions|tasks|results|partitions|watch|stats` as subprocesses against a
`pyarmonik local` cluster running the official test worker."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskDefinition, TaskOptions, TaskStatus

from tests.helpers import LocalProcess, free_port, local_cluster

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=1)
BIG = 2_500


def submit(channel: grpc.Channel, session_id: str, orders: list[dict[str, Any]]) -> list[str]:
    results = ArmoniKResults(channel)
    names = range(len(orders))
    outputs = results.create_results_metadata([f"out-{i}" for i in names], session_id)
    payloads = results.create_results(
        {f"in-{i}": json.dumps(o).encode() for i, o in zip(names, orders, strict=True)},
        session_id,
        batch_size=500,
    )
    submitted = ArmoniKTasks(channel).submit_tasks(
        session_id,
        [
            TaskDefinition(
                payload_id=payloads[f"in-{i}"].result_id,
                expected_output_ids=[outputs[f"out-{i}"].result_id],
            )
            for i in names
        ],
        chunk_size=500,
    )
    return [t.id for t in submitted]


def cli(*args: str, endpoint: str | None = None, env: dict[str, str] | None = None) -> Any:
    """Run `pyarmonik ARGS` (with `-e endpoint` when given)."""
    environment = {k: v for k, v in os.environ.items() if k != "AK_ENDPOINT"}
    environment.update({"COLUMNS": "200", **(env or {})})
    command = [sys.executable, "-m", "pyarmonik.cli.main", *args]
    if endpoint:
        command += ["--endpoint", endpoint]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=environment, check=False
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProcess]:
    with local_cluster(Path(tmp_path_factory.mktemp("cli")), agents=2) as running:
        yield running


@pytest.fixture(scope="module")
def channel(cluster: LocalProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(cluster.endpoint) as opened:
        yield opened


@pytest.fixture(scope="module")
def big_session(cluster: LocalProcess, channel: grpc.Channel) -> str:
    """2,500 tasks, finished: `pyarmonik watch` follows them and exits 0."""
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    submit(channel, session_id, [{"kind": "value", "value": i} for i in range(BIG)])
    watched = cli("watch", session_id, "--interval", "0.2", endpoint=cluster.endpoint)
    assert watched.returncode == 0, watched.stderr
    assert f"{BIG}/{BIG}" in watched.stdout and "COMPLETED" in watched.stdout
    return session_id


@pytest.fixture(scope="module")
def mixed_session(cluster: LocalProcess, channel: grpc.Channel) -> str:
    """3 values and an error, finished."""
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    orders = [{"kind": "value", "value": i} for i in range(3)]
    submit(channel, session_id, [*orders, {"kind": "error", "message": "no way"}])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = ArmoniKTasks(channel).count_tasks_by_status(Task.session_id == session_id)
        if counts.get(TaskStatus.COMPLETED) == 3 and counts.get(TaskStatus.ERROR) == 1:
            return session_id
        time.sleep(0.1)
    raise TimeoutError(f"tasks of the mixed session did not end: {counts}")


def test_stats_match_list_tasks_detailed(
    cluster: LocalProcess, channel: grpc.Channel, big_session: str
) -> None:
    # Pages of 300: 9 requests, the last one partial.
    stats = json.loads(
        ok(cli("stats", big_session, "-o", "json", "--page-size", "300", endpoint=cluster.endpoint))
    )
    tasks: list[Task] = []
    client = ArmoniKTasks(channel)
    while True:  # ListTasksDetailed, page by page
        total, page = client.list_tasks(
            Task.session_id == big_session, page=len(tasks) // 1000, page_size=1000, detailed=True
        )
        tasks += page
        if len(tasks) >= total:
            break
    assert len(tasks) == BIG and all(t.status == TaskStatus.COMPLETED for t in tasks)
    first = min(t.created_at for t in tasks)
    last = max(t.ended_at for t in tasks)
    latencies = [(t.ended_at - t.created_at).total_seconds() for t in tasks]
    processing = [(t.ended_at - t.started_at).total_seconds() for t in tasks]
    assert stats["tasks"] == stats["completed"] == BIG
    assert stats["by_status"] == {"COMPLETED": BIG}
    assert stats["throughput"] == pytest.approx(BIG / (last - first).total_seconds(), rel=1e-9)
    for key, values in (("latency", latencies), ("processing", processing)):
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        expected = {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98]}
        assert stats[key] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    table = ok(cli("stats", big_session, endpoint=cluster.endpoint))
    assert "Throughput" in table and "tasks/s" in table and "p99" in table


def test_listings_filters_and_outputs(
    cluster: LocalProcess, big_session: str, mixed_session: str
) -> None:
    endpoint = cluster.endpoint
    newest_seven = ("--page", "1", "--page-size", "7", "--sort-by", "created_at")
    commands = [
        ("sessions", "-o", "json"),
        ("tasks", "--session", mixed_session, "-f", "status = error", "-o", "json"),
        (
            "tasks",
            "-f",
            f'session_id = "{big_session}"',
            *newest_seven,
            "--sort-direction",
            "desc",
            "-o",
            "yaml",
        ),
        ("results", "--session", mixed_session, "-f", "name startswith out-", "-o", "json"),
        ("partitions", "-o", "yaml"),
        ("tasks", "--session", mixed_session),
    ]
    with ThreadPoolExecutor(len(commands)) as pool:  # each start costs about a second
        outputs = list(pool.map(lambda c: ok(cli(*c, endpoint=endpoint)), commands))
    sessions, failed, page, outputs_json, partitions, table = outputs
    assert {big_session, mixed_session} <= {s["SessionId"] for s in json.loads(sessions)}
    (error,) = json.loads(failed)
    assert error["Status"] == "Error" and error["Output"]["Error"] == "no way"
    seven = yaml.safe_load(page)
    assert len(seven) == 7 and {t["SessionId"] for t in seven} == {big_session}
    assert [t["CreatedAt"] for t in seven] == sorted((t["CreatedAt"] for t in seven), reverse=True)
    assert sorted(r["Name"] for r in json.loads(outputs_json)) == [f"out-{i}" for i in range(4)]
    assert [p["Id"] for p in yaml.safe_load(partitions)] == ["default"]
    assert "4 of 4 tasks" in table and "no way" in table and "ERROR" in table


def test_watch_exit_code_when_tasks_fail(cluster: LocalProcess, mixed_session: str) -> None:
    done = cli("watch", mixed_session, "--interval", "0.2", endpoint=cluster.endpoint)
    assert done.returncode == 1
    assert "1 of 4 tasks failed or were cancelled" in done.stderr


def test_errors_have_messages_and_exit_codes(cluster: LocalProcess) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    calls: list[tuple[tuple[str, ...], str | None, dict[str, str] | None]] = [
        (("watch", "no-such-session"), cluster.endpoint, None),
        (("stats", "no-such-session"), cluster.endpoint, None),
        (("sessions",), unreachable, None),
        (("tasks", "-f", "status = sleepy"), cluster.endpoint, None),
        (("tasks", "-f", "status = = 3"), cluster.endpoint, None),
        (("tasks", "--sort-by", "colour"), cluster.endpoint, None),
        (("sessions", "-o", "json"), None, {"AK_ENDPOINT": unreachable}),
    ]
    with ThreadPoolExecutor(len(calls)) as pool:
        runs = list(pool.map(lambda c: cli(*c[0], endpoint=c[1], env=c[2]), calls))
    codes = [r.returncode for r in runs]
    assert codes == [3, 3, 4, 2, 2, 2, 4], [r.stderr for r in runs]
    assert "Session no-such-session not found" in runs[0].stderr
    assert f"cannot reach the control plane at {unreachable}" in runs[2].stderr
    assert "has no status 'sleepy'" in runs[3].stderr
    assert "Filter syntax error" in runs[4].stderr
    assert "no field 'colour'" in runs[5].stderr
    assert f"cannot reach the control plane at {unreachable}" in runs[6].stderr
