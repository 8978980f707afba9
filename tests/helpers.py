"""Shared test helpers: run a control plane in a background thread, free ports, and the
backend combinations a cluster runs on (embedded, PostgreSQL + RabbitMQ + Redis, PostgreSQL
+ its table queue + S3), each run isolated (own schema, queue and key prefixes, bucket)."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKTasks
from armonik.common import Task, TaskDefinition, TaskStatus

from pyarmonik.compute.orphans import dying_with_parent
from pyarmonik.config import PartitionSettings, Settings
from pyarmonik.control.server import ControlPlane


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BackgroundControlPlane:
    """A ControlPlane served from its own event loop in a daemon thread."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.plane: ControlPlane | None = None

    def start(self) -> None:
        self.thread.start()
        self.plane = self.call(self._start())

    async def _start(self) -> ControlPlane:
        plane = ControlPlane(self.settings)
        await plane.start()
        return plane

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def stop(self) -> None:
        if self.plane is not None:
            self.call(self.plane.stop(grace=0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.settings.port}"


@contextmanager
def control_plane(
    data_dir: Path,
    partitions: tuple[str, ...] = ("default", "other"),
    backends: BackendUrls | None = None,
    **settings: Any,
) -> Iterator[BackgroundControlPlane]:
    """A control plane on `backends` (the embedded ones in `data_dir` by default)."""
    plane = BackgroundControlPlane(
        Settings(
            port=free_port(),
            data_dir=data_dir,
            partitions=[PartitionSettings(id=p) for p in partitions],
            **(backends.settings() if backends else {}),
            **settings,
        )
    )
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


REPO = Path(__file__).resolve().parent.parent
OFFICIAL_WORKER = f"{sys.executable} {REPO / 'tests' / 'e2e' / 'workers' / 'official.py'}"


class LocalProcess:
    """`pyarmonik local` as a subprocess; `endpoint` once it printed it."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.args = args
        self.env = env
        self.process: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def start(self, timeout: float = 60) -> str:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyarmonik.cli.main", "local", *self.args],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line:
                self.endpoint = line.strip()
                return self.endpoint
            if self.process.poll() is not None:
                raise RuntimeError(f"pyarmonik local exited with {self.process.returncode}")
        raise TimeoutError("pyarmonik local did not print its endpoint")

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def submit_orders(
    channel: grpc.Channel, session_id: str, orders: Sequence[dict[str, object]], batch: int = 500
) -> tuple[list[str], list[str]]:
    """One task per order of the end-to-end worker (tests/e2e/workers/official.py: the order,
    as JSON, is the payload), `batch` tasks per call; (task ids, output ids) in order."""
    results, tasks = ArmoniKResults(channel), ArmoniKTasks(channel)
    task_ids: list[str] = []
    output_ids: list[str] = []
    for start in range(0, len(orders), batch):
        chunk = range(start, min(start + batch, len(orders)))
        outputs = results.create_results_metadata(
            [f"out-{i}" for i in chunk], session_id, batch_size=batch
        )
        payloads = results.create_results(
            {f"in-{i}": json.dumps(orders[i]).encode() for i in chunk},
            session_id,
            batch_size=batch,
        )
        submitted = tasks.submit_tasks(
            session_id,
            [
                TaskDefinition(
                    payload_id=payloads[f"in-{i}"].result_id,
                    expected_output_ids=[outputs[f"out-{i}"].result_id],
                )
                for i in chunk
            ],
            chunk_size=batch,
        )
        task_ids += [task.id for task in submitted]
        output_ids += [outputs[f"out-{i}"].result_id for i in chunk]
    return task_ids, output_ids


@contextmanager
def local_cluster(
    data_dir: Path,
    *args: str,
    agents: int = 2,
    worker: str = OFFICIAL_WORKER,
    backends: BackendUrls | None = None,
) -> Iterator[LocalProcess]:
    """`pyarmonik local` on `backends` (the embedded ones in `data_dir` by default)."""
    cluster = LocalProcess(
        [
            "--port",
            str(free_port()),
            "--agents",
            str(agents),
            "--worker",
            worker,
            "--data-dir",
            str(data_dir),
            *(backends.cli_args() if backends else []),
            *args,
        ]
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


# -- backend combinations ---------------------------------------------------------------------

POSTGRES_URL = os.environ.get(
    "PYARMONIK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
RABBITMQ_URL = os.environ.get("PYARMONIK_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("PYARMONIK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

EMBEDDED = "embedded"
PG_RABBIT_REDIS = "pg-rabbit-redis"
PG_TABLE_S3 = "pg-table-s3"
BACKENDS = (EMBEDDED, PG_RABBIT_REDIS, PG_TABLE_S3)
# For `@pytest.fixture(params=BACKEND_PARAMS)`: the same list whatever the environment (a
# missing server skips its tests, or fails them when CI=true); `-m cluster` selects the
# combinations on real servers.
BACKEND_PARAMS = [
    pytest.param(name, id=name, marks=() if name == EMBEDDED else pytest.mark.cluster)
    for name in BACKENDS
]
# Delays the agent releases messages with: their RabbitMQ delay queues are deleted with the
# run's main queues (others expire on their own a minute after their last use).
RABBIT_DELAYS_MS = (1000,)

T = TypeVar("T")


def _run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code (in a thread of its own, so that
    it works whether or not the caller's thread runs an event loop)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def main() -> None:
        try:
            outcome.append(asyncio.run(factory()))
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def with_query(url: str, **params: str) -> str:
    """`url` with extra query parameters."""
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


def require_server(name: str, url: str, default_port: int) -> None:
    """Skip unless the server of `url` accepts connections; fail instead when CI=true."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as error:
        reason = f"{name} is not reachable at {host}:{port} ({error})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)


# moto's server lists its package folder on every request to route it (a quarter of its
# time): list it once. Nor is a log line per request of any use here.
MOTO_SERVER = """
import logging
import sys
import moto.backends
logging.getLogger("werkzeug").disabled = True
modules = tuple(moto.backends.list_of_moto_modules())
moto.backends.list_of_moto_modules = lambda: modules
from moto.server import main
main(sys.argv[1:])
"""


class MotoServer:
    """An S3-compatible server (moto) in a process of its own, shared by the whole run."""

    _instance: MotoServer | None = None

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            dying_with_parent(
                [sys.executable, "-c", MOTO_SERVER, "-H", "127.0.0.1", "-p", str(self.port)]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @classmethod
    def shared(cls) -> MotoServer:
        if cls._instance is None or cls._instance.process.poll() is not None:
            cls._instance = cls()
            atexit.register(cls._instance.stop)
        return cls._instance


@dataclass
class BackendUrls:
    """The backends of one isolated cluster run (None: the embedded default)."""

    name: str
    database: str | None = None
    queue: str | None = None
    objects: str | None = None
    schema: str = ""  # PostgreSQL schema of the run
    prefix: str = ""  # RabbitMQ queue-name prefix and Redis key prefix (without ':')
    bucket: str = ""  # S3 bucket

    def cli_args(self) -> list[str]:
        """`--database/--queue/--objects` flags of `pyarmonik control|agent|local`."""
        return [arg for flag, value in self.settings().items() for arg in (f"--{flag}", value)]

    def settings(self) -> dict[str, str]:
        """Overrides of `Settings` (database, queue, objects)."""
        values = {"database": self.database, "queue": self.queue, "objects": self.objects}
        return {key: value for key, value in values.items() if value}


def _drop_schema(schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        connection = await asyncpg.connect(POSTGRES_URL, timeout=10)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()

    _run_async(drop)


def _delete_rabbit_queues(names: list[str]) -> None:
    import aio_pika

    async def delete() -> None:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=10)
        async with connection:
            channel = await connection.channel()
            for name in names:
                await channel.queue_delete(name)

    _run_async(delete)


def _delete_redis_keys(pattern: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=10)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


def moto_s3_client(endpoint: str) -> Any:
    """An S3 client (async context manager) of the test S3 server at `endpoint`."""
    from aiobotocore.session import get_session

    return get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _delete_bucket(endpoint: str, bucket: str) -> None:
    async def delete() -> None:
        async with moto_s3_client(endpoint) as client:
            try:
                listed = await client.list_objects_v2(Bucket=bucket)
            except client.exceptions.NoSuchBucket:
                return
            while True:
                keys = [{"Key": item["Key"]} for item in listed.get("Contents", [])]
                if keys:
                    await client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
                if not listed.get("IsTruncated"):
                    break
                listed = await client.list_objects_v2(Bucket=bucket)
            await client.delete_bucket(Bucket=bucket)

    _run_async(delete)


@contextmanager
def cluster_backends(
    name: str, partitions: Sequence[str] = ("default", "other")
) -> Iterator[BackendUrls]:
    """The URLs of one backend combination, isolated for this run and cleaned up after it:
    a fresh PostgreSQL schema, RabbitMQ queues and Redis keys under a unique prefix, a fresh
    S3 bucket. `partitions` names the RabbitMQ queues to delete afterwards."""
    if name == EMBEDDED:
        yield BackendUrls(name)
        return
    if name not in BACKENDS:
        raise ValueError(f"unknown backend combination {name!r}")
    tag = uuid.uuid4().hex[:12]
    require_server("PostgreSQL", POSTGRES_URL, 5432)
    urls = BackendUrls(
        name,
        database=with_query(POSTGRES_URL, schema=f"test_{tag}"),
        schema=f"test_{tag}",
        prefix=f"pyarmonik-test-{tag}",
    )
    cleanups: list[Callable[[], None]] = [lambda: _drop_schema(urls.schema)]
    if name == PG_RABBIT_REDIS:
        require_server("RabbitMQ", RABBITMQ_URL, 5672)
        require_server("Redis", REDIS_URL, 6379)
        urls.queue = with_query(RABBITMQ_URL, prefix=urls.prefix)
        urls.objects = with_query(REDIS_URL, prefix=f"{urls.prefix}:")
        queues = [
            queue_name
            for partition in partitions
            for queue_name in (
                f"{urls.prefix}.{partition}",
                *(f"{urls.prefix}.{partition}.delay.{ms}" for ms in RABBIT_DELAYS_MS),
            )
        ]
        cleanups += [
            lambda: _delete_rabbit_queues(queues),
            lambda: _delete_redis_keys(f"{urls.prefix}:*"),
        ]
    else:
        endpoint = MotoServer.shared().endpoint
        urls.queue = "table"
        urls.bucket = urls.prefix
        urls.objects = f"s3://testing:testing@{urls.bucket}?endpoint={endpoint}&region=us-east-1"
        cleanups.append(lambda: _delete_bucket(endpoint, urls.bucket))
    try:
        yield urls
    finally:
        failures = []
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception as error:  # clean up the rest anyway
                failures.append(error)
        if failures:
            raise failures[0]


# -- a session read through the official client, while servers come and go -------------------

# Statuses of a task still to run.
ACTIVE = frozenset(
    {
        TaskStatus.CREATING,
        TaskStatus.SUBMITTED,
        TaskStatus.DISPATCHED,
        TaskStatus.PROCESSING,
        TaskStatus.PENDING,
        TaskStatus.CANCELLING,
    }
)


def retrying(call: Callable[[], T], timeout: float = 60) -> T:
    """A client call, retried while the control plane cannot answer (it is restarting, or
    its backend is down)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def session_finished(channel: grpc.Channel, session_id: str) -> bool:
    """No task of the session is still to run (asked again while the control plane cannot
    answer)."""
    tasks = ArmoniKTasks(channel)
    counts = retrying(lambda: tasks.count_tasks_by_status(Task.session_id == session_id))
    return not ACTIVE.intersection(counts)


def all_tasks(channel: grpc.Channel, session_id: str) -> list[Task]:
    """Every task of the session, every attempt included."""
    tasks, listed, page = ArmoniKTasks(channel), [], 0
    while True:
        total, chunk = tasks.list_tasks(Task.session_id == session_id, page=page, page_size=1000)
        listed += chunk
        if len(listed) >= total or not chunk:
            return listed
        page += 1
