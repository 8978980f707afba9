"""The queue plugins of plugins/ serving a real cluster: `pyarmonik local` with
`--queue sqs://…` (moto's server) or `--queue nats://…` (nats-server), each opened through
its entry point, the official worker running the tasks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskOptions, TaskStatus

from tests.backends.conftest_queue_objects import PLUGINS, require_plugin
from tests.helpers import (
    BackendUrls,
    LocalProcess,
    MotoServer,
    _run_async,
    local_cluster,
    require_server,
    submit_orders,
)

pytestmark = pytest.mark.timeout(180)
OPTIONS = TaskOptions(max_duration=timedelta(seconds=30), priority=1, max_retries=2)


@pytest.fixture(scope="module", params=sorted(PLUGINS))
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalProcess]:
    scheme: str = request.param
    require_plugin("queue", scheme, PLUGINS[scheme])
    prefix = f"t{uuid.uuid4().hex[:12]}"
    if scheme == "nats":
        require_server("NATS", "nats://127.0.0.1:4222", 4222)
        url = f"nats://127.0.0.1:4222/?prefix={prefix}&ack_wait=2"
    else:
        endpoint = MotoServer.shared().endpoint
        url = f"sqs://testing:testing@us-east-1/?endpoint={endpoint}&prefix={prefix}"
    backends = BackendUrls(f"embedded-{scheme}", queue=url)
    try:
        with local_cluster(Path(tmp_path_factory.mktemp("local")), backends=backends) as running:
            yield running
    finally:
        _run_async(lambda: _drop(url))


async def _drop(url: str) -> None:
    """Delete what the run made on the broker (the plugin's own clean-up)."""
    from pyarmonik.storage.database.sqlite import SqliteDatabase
    from pyarmonik.storage.factory import open_queue

    queue = open_queue(url, SqliteDatabase(":memory:"), fair=False)
    await queue.start()
    try:
        await queue.drop()  # type: ignore[attr-defined]
    finally:
        await queue.close()


@pytest.fixture(scope="module")
def channel(cluster: LocalProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(cluster.endpoint) as ch:
        yield ch


def test_tasks_run_through_the_plugin_queue(channel: grpc.Channel) -> None:
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    orders: list[dict[str, object]] = [{"kind": "upper", "text": f"t{n}"} for n in range(20)]
    outputs = submit_orders(channel, session_id, orders, batch=100)[1]
    ArmoniKEvents(channel).wait_for_result_availability(outputs, session_id)
    results = ArmoniKResults(channel)
    assert [results.download_result_data(out, session_id) for out in outputs] == [
        f"T{n}".encode() for n in range(20)
    ]


def test_subtasks_submitted_by_the_worker(channel: grpc.Channel) -> None:
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    (out,) = submit_orders(channel, session_id, [{"kind": "fanout", "n": 6}], batch=100)[1]
    ArmoniKEvents(channel).wait_for_result_availability([out], session_id)
    assert ArmoniKResults(channel).download_result_data(out, session_id) == b"21"
    total, listed = ArmoniKTasks(channel).list_tasks(Task.session_id == session_id, page_size=50)
    assert total == 1 + 6 + 1
    assert all(task.status == TaskStatus.COMPLETED for task in listed)
