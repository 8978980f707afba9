"""Openers of pyarmonik's own adapters, declared as entry points in pyproject.toml like any
plugin's (see storage/plugins.py). Each imports its adapter only when used."""

from __future__ import annotations

from pyarmonik.storage.database import Database
from pyarmonik.storage.objects import ObjectStorage
from pyarmonik.storage.queue import Queue


def sqlite_database(url: str) -> Database:
    from pyarmonik.storage.database.sqlite import SqliteDatabase

    return SqliteDatabase(url.removeprefix("sqlite://"))


def postgres_database(url: str) -> Database:
    from pyarmonik.storage.database.postgres import PostgresDatabase

    return PostgresDatabase(url)


def table_queue(url: str, database: Database, fair: bool) -> Queue:
    """`table`: the queue kept in the database itself."""
    from pyarmonik.storage.queue.table import TableQueue

    return TableQueue(database, fair=fair)


def rabbitmq_queue(url: str, database: Database, fair: bool) -> Queue:
    from pyarmonik.storage.queue.rabbitmq import RabbitQueue

    return RabbitQueue(url, fair=fair)


def file_objects(url: str) -> ObjectStorage:
    from pyarmonik.storage.objects.files import FileStorage

    return FileStorage(url.removeprefix("file://"))


def redis_objects(url: str) -> ObjectStorage:
    from pyarmonik.storage.objects.redis import RedisStorage

    return RedisStorage(url)


def s3_objects(url: str) -> ObjectStorage:
    from pyarmonik.storage.objects.s3 import S3Storage

    return S3Storage(url)
