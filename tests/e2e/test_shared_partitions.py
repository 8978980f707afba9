"""Partitions sharing agents: an agent serves its own partition and, when that one has no
work, the partitions it also serves, in order (`pyarmonik agent --partition a --partition b`,
`also_serves` in `pyarmonik local`'s config)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskDefinition, TaskOptions

from pyarmonik.compute.agent import Agent, AgentSettings
from pyarmonik.config import PartitionSettings, Settings, load_settings
from pyarmonik.storage.factory import open_backends
from tests.helpers import (
    EMBEDDED,
    OFFICIAL_WORKER,
    PG_RABBIT_REDIS,
    BackendUrls,
    LocalProcess,
    cluster_backends,
    control_plane,
    free_port,
)
from tests.processes import agent_pids


def options(partition: str) -> TaskOptions:
    return TaskOptions(
        max_duration=timedelta(seconds=60), priority=1, max_retries=1, partition_id=partition
    )


def submit(channel: grpc.Channel, session_id: str, partition: str, count: int) -> list[str]:
    """`count` quick tasks on `partition`; their output ids."""
    results = ArmoniKResults(channel)
    names = [f"{partition}-{i}" for i in range(count)]
    outputs = results.create_results_metadata(names, session_id)
    payload = results.create_results(
        {"p": json.dumps({"kind": "value", "value": partition}).encode()}, session_id
    )["p"].result_id
    ArmoniKTasks(channel).submit_tasks(
        session_id,
        [
            TaskDefinition(
                payload_id=payload,
                expected_output_ids=[outputs[n].result_id],
                options=options(partition),
            )
            for n in names
        ],
    )
    return [outputs[n].result_id for n in names]


@pytest.fixture(params=[EMBEDDED, pytest.param(PG_RABBIT_REDIS, marks=pytest.mark.cluster)])
def backends(request: pytest.FixtureRequest) -> Iterator[BackendUrls]:
    with cluster_backends(request.param, partitions=("a", "b")) as urls:
        yield urls


def test_an_agent_serving_two_partitions_runs_both_the_first_first(
    tmp_path: Path, backends: BackendUrls
) -> None:
    """Tasks of b queued before those of a: the agent serving [a, b] still runs every task
    of a before any of b (on the table queue; a broker delivers asynchronously, so there the
    order is only what has arrived: both partitions are served)."""
    with (
        control_plane(tmp_path, partitions=("a", "b"), backends=backends) as plane,
        grpc.insecure_channel(plane.endpoint) as channel,
    ):
        session_id = ArmoniKSessions(channel).create_session(options("a"), partition_ids=["a", "b"])
        b_outputs = submit(channel, session_id, "b", 6)
        a_outputs = submit(channel, session_id, "a", 6)
        settings = load_settings(None, data_dir=tmp_path, **backends.settings())
        agent = Agent(
            open_backends(settings),
            AgentSettings(
                partition_id="a",
                also_serves=["b"],
                worker_command=OFFICIAL_WORKER,
                work_dir=tmp_path / "agent",
            ),
        )
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        runner = threading.Thread(target=loop.run_until_complete, args=(agent.run(stop),))
        runner.start()
        try:
            ArmoniKEvents(channel).wait_for_result_availability(a_outputs + b_outputs, session_id)
            tasks = ArmoniKTasks(channel).list_tasks(Task.session_id == session_id, page_size=100)[
                1
            ]
        finally:
            loop.call_soon_threadsafe(stop.set)
            runner.join(60)
            loop.close()
    assert agent.completed == 12
    # When each ran: the worker's end of it (tasks started with their pull share one start
    # stamp, their transaction's).
    ran = {p: [t.processed_at for t in tasks if t.options.partition_id == p] for p in "ab"}
    assert len(ran["a"]) == len(ran["b"]) == 6
    if backends.queue is None:  # the table queue: the order is the agent's, strictly
        assert max(ran["a"]) < min(ran["b"]), "a task of b ran before one of a"


def test_local_config_with_a_shared_partition(tmp_path: Path) -> None:
    """`also_serves`: the agents of `main` run the tasks of `spare`, which has none of its
    own; a partition of another worker cannot be shared."""
    config = tmp_path / "cluster.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "partitions": [
                    {
                        "id": "main",
                        "agents": 1,
                        "worker": OFFICIAL_WORKER,
                        "also_serves": ["spare"],
                    },
                    {"id": "spare", "agents": 0, "worker": OFFICIAL_WORKER},
                ]
            }
        )
    )
    cluster = LocalProcess(
        ["--port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--config", str(config)]
    )
    cluster.start()
    try:
        assert cluster.process is not None
        with grpc.insecure_channel(cluster.endpoint) as channel:
            session_id = ArmoniKSessions(channel).create_session(
                options("spare"), partition_ids=["main", "spare"]
            )
            outputs = submit(channel, session_id, "spare", 3) + submit(
                channel, session_id, "main", 1
            )
            ArmoniKEvents(channel).wait_for_result_availability(outputs, session_id)
            results = ArmoniKResults(channel)
            assert results.download_result_data(outputs[0], session_id) == b"spare"
            assert results.download_result_data(outputs[-1], session_id) == b"main"
        assert len(agent_pids(cluster.process.pid)) == 1
    finally:
        assert cluster.stop() == 0

    other = {"id": "gpu", "worker": "python other_worker.py"}
    with pytest.raises(ValueError, match="whose worker differs"):
        load_settings(None, partitions=[{"id": "cpu", "also_serves": ["gpu"]}, other])
    with pytest.raises(ValueError, match="not declared"):
        Settings(partitions=[PartitionSettings(id="cpu", also_serves=["nowhere"])])


def test_agent_command_line_takes_several_partitions_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--partition` repeated: the first is the agent's own, the others follow in order."""
    from typer.testing import CliRunner

    import pyarmonik.compute.agent as agent_module
    from pyarmonik.cli import main as cli

    built: list[AgentSettings] = []

    class Recording(AgentSettings):
        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            built.append(self)

    monkeypatch.setattr(cli, "run_until_signal", lambda main: None)
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)
    monkeypatch.setattr(agent_module, "AgentSettings", Recording)
    args = ["agent", "--partition", "a", "--partition", "b", "--partition", "a"]
    result = CliRunner().invoke(cli.app, [*args, "--worker", "true"])
    assert result.exit_code == 0, result.output
    assert [(s.partition_id, s.also_serves, s.served) for s in built] == [("a", ["b"], ["a", "b"])]
