"""Backends from configuration URLs: the only place that knows every adapter."""

from __future__ import annotations

from urllib.parse import urlparse

from pyarmonik.config import Settings
from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.scheduling.backends import Backends
from pyarmonik.storage.database import Database
from pyarmonik.storage.objects import ObjectStorage
from pyarmonik.storage.queue import Queue


def open_database(url: str) -> Database:
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from pyarmonik.storage.database.sqlite import SqliteDatabase

        return SqliteDatabase(url.removeprefix("sqlite://"))
    if scheme in ("postgres", "postgresql"):
        from pyarmonik.storage.database.postgres import PostgresDatabase

        return PostgresDatabase(url)
    raise InvalidArgument(
        f"unsupported database URL {url!r} (use sqlite:///PATH or postgresql://...)"
    )


def open_queue(url: str, database: Database) -> Queue:
    scheme = urlparse(url).scheme
    if url == "table":
        from pyarmonik.storage.queue.table import TableQueue

        return TableQueue(database)
    if scheme in ("amqp", "amqps"):
        from pyarmonik.storage.queue.rabbitmq import RabbitQueue

        return RabbitQueue(url)
    raise InvalidArgument(f"unsupported queue URL {url!r} (use 'table' or amqp://...)")


def open_objects(url: str) -> ObjectStorage:
    scheme = urlparse(url).scheme
    if scheme == "file":
        from pyarmonik.storage.objects.files import FileStorage

        return FileStorage(url.removeprefix("file://"))
    if scheme in ("redis", "rediss"):
        from pyarmonik.storage.objects.redis import RedisStorage

        return RedisStorage(url)
    if scheme == "s3":
        from pyarmonik.storage.objects.s3 import S3Storage

        return S3Storage(url)
    raise InvalidArgument(
        f"unsupported object storage URL {url!r} (use file://, redis:// or s3://)"
    )


def open_backends(settings: Settings) -> Backends:
    from pyarmonik.storage.objects.inline import InlineObjects

    database = open_database(settings.database_url)
    # Wrapped even with a threshold of 0 (nothing new stored inline): blobs stored in the
    # database under another setting, or by another process, stay readable.
    objects = InlineObjects(database, open_objects(settings.objects_url), settings.inline_threshold)
    return Backends(
        database=database,
        queue=open_queue(settings.queue_url, database),
        objects=objects,
        partitions=[p.record() for p in settings.partition_list()],
        default_partition=settings.default_partition,
    )
