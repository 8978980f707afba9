"""Cluster mode on real servers: PostgreSQL + RabbitMQ + Redis, and PostgreSQL + its table queue
+ S3 (a moto server).

The control-plane conformance suite (tests/conformance, its `plane` fixture) and the
compute-plane end-to-end scenarios with the official worker (tests/e2e/test_official_worker.py,
its `cluster` fixture) run unchanged on each combination: both fixtures are parametrised over
tests.helpers.BACKENDS, and `-m cluster` selects the runs on real servers.

This module checks what those suites take for granted: that a cluster really keeps its state
in the backends it was given, each run isolated (its own PostgreSQL schema, RabbitMQ queues
and Redis keys under its own prefix, its own S3 bucket), and that nothing is left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aio_pika
import asyncpg
import grpc
import pytest
import redis
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskStatus

from tests.e2e.test_official_worker import OPTIONS, submit
from tests.helpers import (
    PG_RABBIT_REDIS,
    PG_TABLE_S3,
    POSTGRES_URL,
    RABBITMQ_URL,
    REDIS_URL,
    BackendUrls,
    MotoServer,
    _run_async,
    cluster_backends,
    local_cluster,
    moto_s3_client,
)

pytestmark = pytest.mark.cluster


def pg_fetch(schema: str, sql: str) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(POSTGRES_URL, timeout=10)
        try:
            return list(await connection.fetch(sql.format(schema=f'"{schema}"')))
        finally:
            await connection.close()

    return _run_async(fetch)


def schema_exists(schema: str) -> bool:
    rows = pg_fetch(schema, f"SELECT 1 FROM pg_namespace WHERE nspname = '{schema}'")
    return bool(rows)


def rabbit_queue_messages(name: str) -> int | None:
    """Messages ready in a RabbitMQ queue; None when the queue does not exist."""

    async def probe() -> int | None:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=10)
        async with connection:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return None
            return int(queue.declaration_result.message_count or 0)

    return _run_async(probe)


def redis_headers(prefix: str) -> set[str]:
    """Blob ids stored under a Redis key prefix (their header keys, `{prefix}:{<id>}`)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [key.decode() for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    finally:
        client.close()
    return {key.split("{", 1)[1].split("}", 1)[0] for key in keys if key.endswith("}")}


def s3_keys(bucket: str) -> set[str] | None:
    """Keys of an S3 bucket; None when the bucket does not exist."""

    async def listing() -> set[str] | None:
        async with moto_s3_client(MotoServer.shared().endpoint) as client:
            try:
                listed = await client.list_objects_v2(Bucket=bucket)
            except client.exceptions.NoSuchBucket:
                return None
            return {str(item.get("Key")) for item in listed.get("Contents", [])}

    return _run_async(listing)


@pytest.fixture(params=[PG_RABBIT_REDIS, PG_TABLE_S3])
def backends(request: pytest.FixtureRequest) -> Iterator[BackendUrls]:
    with cluster_backends(request.param, partitions=["default"]) as urls:
        yield urls
    # Cleaned up: nothing of the run is left on the servers.
    assert not schema_exists(urls.schema)
    if request.param == PG_RABBIT_REDIS:
        assert rabbit_queue_messages(f"{urls.prefix}.default") is None
        assert not redis_headers(urls.prefix)
    else:
        assert s3_keys(urls.bucket) is None


def test_cluster_keeps_its_state_in_its_own_backends(backends: BackendUrls, tmp_path: Path) -> None:
    with (
        local_cluster(tmp_path, backends=backends) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
    ):
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        orders: list[dict[str, object]] = [{"kind": "value", "value": i} for i in range(20)]
        outputs = submit(channel, session_id, [*orders, {"kind": "fanout", "n": 4}])
        ArmoniKEvents(channel).wait_for_result_availability(outputs, session_id)
        results = ArmoniKResults(channel)
        for i, out in enumerate(outputs[:20]):
            assert results.download_result_data(out, session_id) == str(i).encode()
        assert results.download_result_data(outputs[20], session_id) == b"10"
        counts = ArmoniKTasks(channel).count_tasks_by_status(Task.session_id == session_id)
        assert counts == {TaskStatus.COMPLETED: 20 + 1 + 4 + 1}

        # The database: the run's schema holds the session's tasks and results.
        tasks = pg_fetch(
            backends.schema,
            "SELECT status, count(*) AS n FROM {schema}.tasks "
            f"WHERE session_id = '{session_id}' GROUP BY status",
        )
        assert {(row["status"], row["n"]) for row in tasks} == {(TaskStatus.COMPLETED, 26)}
        blobs = {
            bytes(row["opaque_id"]).decode()
            for row in pg_fetch(
                backends.schema,
                "SELECT opaque_id FROM {schema}.results "
                f"WHERE session_id = '{session_id}' AND status = 2",
            )
        }
        # payloads and outputs of 21 client tasks, 4 children and their payloads, the
        # aggregation payload and the 4 children's outputs (the aggregate is outputs[20])
        assert len(blobs) == 21 * 2 + 4 + 4 + 1
        # Small ones are rows of the run's schema (storage/objects/inline.py), the others
        # in the object storage.
        rows = pg_fetch(backends.schema, "SELECT opaque_id FROM {schema}.objects")
        in_database = {bytes(row["opaque_id"]).decode() for row in rows}
        assert in_database <= blobs and all(b.startswith("db:") for b in in_database)
        blobs -= in_database

        # The object storage holds exactly those blobs, under the run's prefix or bucket;
        # the queue is empty, under the run's prefix or in the run's schema.
        if backends.name == PG_RABBIT_REDIS:
            assert redis_headers(backends.prefix) == blobs
            eventually(lambda: rabbit_queue_messages(f"{backends.prefix}.default") == 0)
        else:
            assert s3_keys(backends.bucket) == blobs
            count = "SELECT count(*) AS n FROM {schema}.queue"
            eventually(lambda: pg_fetch(backends.schema, count)[0]["n"] == 0)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Acks follow the completions the client saw: give them a moment."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)
