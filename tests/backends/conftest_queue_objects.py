"""Fixtures of the queue and object-storage contract suites (imported by those test modules).

Real servers: RabbitMQ, Redis and NATS on 127.0.0.1 (skipped when absent, failed when CI=true),
and an in-process moto server (S3, SQS).

Third-party adapters (plugins, docs/plugins.md) join the suites through their URLs:
PYARMONIK_TEST_QUEUE_URLS / PYARMONIK_TEST_OBJECT_URLS, space-separated, each opened through
its entry point; `{unique}` in a URL becomes a fresh name for each test (a prefix, a bucket).
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyarmonik.storage.objects import ObjectStorage
from pyarmonik.storage.queue import Queue

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222/?prefix={unique}&ack_wait=1&pull_wait=0.2"
SQS_URL = "sqs://testing:testing@us-east-1/?endpoint={endpoint}&prefix={unique}&pull_wait=0.2"
# The queue plugins shipped in plugins/, with the command that installs each.
PLUGINS = {
    "nats": "pip install -e plugins/pyarmonik-nats",
    "sqs": "pip install -e plugins/pyarmonik-sqs",
}


def plugin_urls(variable: str) -> list[str]:
    """Adapter URLs of a third party's plugin from the environment (see the docstring)."""
    return os.environ.get(variable, "").split()


def require_plugin(kind: Any, scheme: str, install: str) -> None:
    """Skip when no adapter serves `scheme` (failed when CI=true, which installs them all)."""
    from pyarmonik.storage.plugins import installed

    if scheme not in installed(kind):
        reason = f"no {kind} plugin for {scheme}:// is installed ({install})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)


def require_service(name: str, host: str, port: int) -> None:
    """Skip when a server is not listening, except in CI where its absence is a failure."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        reason = f"{name} is not reachable at {host}:{port} ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------------- queues


@dataclass
class QueueBackend:
    """One queue backend: `make()` returns another started consumer/producer on it
    (`make(fair=False)`: one serving in strict FIFO order within a priority)."""

    name: str
    make: Callable[..., Awaitable[Queue]]
    opened: list[Any] = field(default_factory=list)


@pytest.fixture(
    params=["table-sqlite", "rabbitmq", "nats", "sqs"]
    + [f"url:{url}" for url in plugin_urls("PYARMONIK_TEST_QUEUE_URLS")]
)
async def queue_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[QueueBackend]:
    if request.param in PLUGINS or request.param.startswith("url:"):
        async for plugin in _plugin_queue_backend(request, tmp_path):
            yield plugin
        return
    if request.param == "table-sqlite":
        from pyarmonik.storage.database.sqlite import SqliteDatabase
        from pyarmonik.storage.queue.table import TableQueue

        async def make(fair: bool = True) -> Queue:
            # One database object per consumer, as if each were its own process.
            database = SqliteDatabase(tmp_path / "db.sqlite")
            await database.start()
            queue = TableQueue(database, fair=fair)
            await queue.start()
            backend.opened += [queue, database]
            return queue

    else:
        require_service("RabbitMQ", "127.0.0.1", 5672)
        from pyarmonik.storage.queue.rabbitmq import RabbitQueue

        prefix = f"pyarmonik-test-{uuid.uuid4().hex[:12]}"

        async def make(fair: bool = True) -> Queue:
            queue = RabbitQueue(RABBITMQ_URL, prefix=prefix, fair=fair)
            await queue.start()
            backend.opened.append(queue)
            return queue

    backend = QueueBackend(request.param, make)
    yield backend
    declared: set[str] = set()
    for opened in backend.opened:
        declared |= getattr(opened, "declared", set())
        await opened.close()
    if declared:
        import aio_pika

        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection:
            channel = await connection.channel()
            for name in declared:
                await channel.queue_delete(name)


async def _plugin_queue_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[QueueBackend]:
    """A queue opened by URL through its entry point, as pyarmonik opens it; each consumer
    with a database of its own (a plugin may keep its queue there, as `table` does)."""
    from pyarmonik.storage.database.sqlite import SqliteDatabase
    from pyarmonik.storage.factory import open_queue
    from pyarmonik.storage.plugins import scheme_of

    name: str = request.param
    if name == "nats":
        require_plugin("queue", "nats", PLUGINS["nats"])
        require_service("NATS", "127.0.0.1", 4222)
        template = NATS_URL
    elif name == "sqs":
        require_plugin("queue", "sqs", PLUGINS["sqs"])
        template = SQS_URL.replace("{endpoint}", request.getfixturevalue("s3_endpoint"))
    else:
        template = name.removeprefix("url:")
        require_plugin("queue", scheme_of(template), "install the plugin")
    url = template.replace("{unique}", f"t{uuid.uuid4().hex[:12]}")

    async def make(fair: bool = True) -> Queue:
        database = SqliteDatabase(tmp_path / "plugin-db.sqlite")
        await database.start()
        queue = open_queue(url, database, fair=fair)
        await queue.start()
        backend.opened += [queue, database]
        return queue

    backend = QueueBackend(name, make)
    yield backend
    # An adapter may offer `drop()`: delete what its prefix made on the server.
    droppers = [queue for queue in backend.opened if hasattr(queue, "drop")]
    if droppers:
        with contextlib.suppress(Exception):
            await droppers[-1].drop()
    for opened in backend.opened:
        await opened.close()


# ---------------------------------------------------------------------------- object storage


@dataclass
class ObjectBackend:
    """A started storage, and what it holds in its backing store (to check nothing leaked)."""

    name: str
    storage: ObjectStorage
    leftovers: Callable[[], Awaitable[list[str]]]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An in-process S3-compatible server (moto) for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(
    params=["files", "redis", "s3", "inline-sqlite-files", "inline-postgres-redis"]
    + [f"url:{url}" for url in plugin_urls("PYARMONIK_TEST_OBJECT_URLS")]
)
async def object_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ObjectBackend]:
    async for backend in open_object_backend(request.param, request, tmp_path):
        yield backend


async def open_object_backend(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ObjectBackend]:
    """The storage called `name`, started; stopped when the generator is resumed."""
    if name.startswith("inline-"):
        async for backend in _inline_backend(name, request, tmp_path):
            yield backend
    elif name.startswith("url:"):
        from pyarmonik.storage.factory import open_objects
        from pyarmonik.storage.plugins import scheme_of

        template = name.removeprefix("url:")
        require_plugin("objects", scheme_of(template), "install the plugin")
        plugin = open_objects(template.replace("{unique}", f"t{uuid.uuid4().hex[:12]}"))
        await plugin.start()

        async def plugin_left() -> list[str]:
            # The leak checks need the adapter's `leftovers()`: what it still stores.
            listing = getattr(plugin, "leftovers", None)
            if listing is None:
                pytest.skip("the adapter has no leftovers(): nothing left behind is checked")
            return sorted(await listing())

        yield ObjectBackend(name, plugin, plugin_left)
        await plugin.close()
    elif name == "files":
        from pyarmonik.storage.objects.files import FileStorage

        root = tmp_path / "objects"
        files = FileStorage(root)
        await files.start()

        async def files_left() -> list[str]:
            return sorted(path.name for path in root.iterdir())

        yield ObjectBackend(name, files, files_left)
        await files.close()

    elif name == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        from pyarmonik.storage.objects.redis import RedisStorage

        prefix = f"pyarmonik-test-{uuid.uuid4().hex[:12]}:"
        redis = RedisStorage(REDIS_URL, prefix=prefix)
        await redis.start()

        async def redis_left() -> list[str]:
            keys = [key async for key in redis.client.scan_iter(match=f"{prefix}*")]
            return sorted(key.decode() for key in keys)

        yield ObjectBackend(name, redis, redis_left)
        leftover = [key async for key in redis.client.scan_iter(match=f"{prefix}*")]
        if leftover:
            await redis.client.delete(*leftover)
        await redis.close()

    else:
        from pyarmonik.storage.objects.s3 import MIN_PART_SIZE, S3Storage

        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = f"pyarmonik-test-{uuid.uuid4().hex[:12]}"
        # Smallest legal parts, so that the multi-chunk blobs exercise multipart uploads.
        s3 = S3Storage(
            f"s3://testing:testing@{bucket}?endpoint={endpoint}&region=us-east-1",
            part_size=MIN_PART_SIZE,
        )
        await s3.start()

        async def s3_left() -> list[str]:
            listed = await s3.client.list_objects_v2(Bucket=bucket)
            uploads = await s3.client.list_multipart_uploads(Bucket=bucket)
            return sorted(
                [str(item.get("Key")) for item in listed.get("Contents", [])]
                + [f"upload:{item.get('Key')}" for item in uploads.get("Uploads", [])]
            )

        yield ObjectBackend(name, s3, s3_left)
        await s3.close()


async def _inline_backend(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ObjectBackend]:
    """InlineObjects (default threshold) over a database and one of the storages above:
    `inline-<sqlite|postgres>-<storage>`."""
    from pyarmonik.config import DEFAULT_INLINE_THRESHOLD
    from pyarmonik.storage.database import Database
    from pyarmonik.storage.database.postgres import PostgresDatabase
    from pyarmonik.storage.database.sqlite import SqliteDatabase
    from pyarmonik.storage.objects.inline import InlineObjects
    from tests.backends.conftest import postgres_schema

    _, engine, outer_name = name.split("-", 2)
    async with contextlib.AsyncExitStack() as stack:
        database: Database
        if engine == "sqlite":
            database = SqliteDatabase(tmp_path / "inline.db")
        else:
            database = PostgresDatabase(await stack.enter_async_context(postgres_schema()))
        await database.start()
        stack.push_async_callback(database.close)
        outers = open_object_backend(outer_name, request, tmp_path)
        outer = await anext(outers)
        stack.push_async_callback(anext, outers, None)
        storage = InlineObjects(database, outer.storage, DEFAULT_INLINE_THRESHOLD)

        async def inline_left() -> list[str]:
            async with database.read() as repository:
                rows = await repository.connection.fetch("SELECT opaque_id FROM objects")
            return sorted(await outer.leftovers() + [bytes(r["opaque_id"]).decode() for r in rows])

        yield ObjectBackend(name, storage, inline_left)
