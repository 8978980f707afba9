"""Our own query parameters of backend URLs (`?prefix=`), taken off before the client library
sees the URL."""

from __future__ import annotations

import pytest

from pyarmonik.storage.objects.redis import RedisStorage
from pyarmonik.storage.queue.rabbitmq import RabbitQueue
from pyarmonik.storage.urls import pop_query


def test_pop_query() -> None:
    assert pop_query("amqp://h/?prefix=a&heartbeat=5", "prefix") == ("amqp://h/?heartbeat=5", "a")
    assert pop_query("amqp://u:p@h:5672/vhost?prefix=b", "prefix") == (
        "amqp://u:p@h:5672/vhost",
        "b",
    )
    assert pop_query("redis://h:6379/0", "prefix") == ("redis://h:6379/0", None)
    assert pop_query("redis://h/0?prefix=", "prefix") == ("redis://h/0", "")


def test_rabbitmq_prefix_from_the_url() -> None:
    queue = RabbitQueue("amqp://guest:guest@127.0.0.1:5672/?prefix=run-1&heartbeat=5")
    assert queue.prefix == "run-1"
    assert queue.queue_name("default") == "run-1.default"
    assert queue.url == "amqp://guest:guest@127.0.0.1:5672/?heartbeat=5"
    assert RabbitQueue("amqp://127.0.0.1/").prefix == "pyarmonik"
    assert RabbitQueue("amqp://127.0.0.1/?prefix=url", prefix="argument").prefix == "argument"


def test_redis_prefix_from_the_url() -> None:
    storage = RedisStorage("redis://127.0.0.1:6379/0?prefix=run-1:")
    assert storage.prefix == "run-1:"
    assert storage.url == "redis://127.0.0.1:6379/0"
    assert RedisStorage("redis://127.0.0.1:6379/0").prefix == "pyarmonik:"
    assert RedisStorage("redis://h/0?prefix=url:", prefix="argument:").prefix == "argument:"


def test_queue_order_reaches_both_queue_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    """`queue_order` (PYARMONIK_QUEUE_ORDER) picks fair share or strict FIFO for any queue."""
    from pyarmonik.config import load_settings
    from pyarmonik.storage.database.sqlite import SqliteDatabase
    from pyarmonik.storage.factory import open_queue
    from pyarmonik.storage.queue.table import TableQueue

    monkeypatch.delenv("PYARMONIK_QUEUE_ORDER", raising=False)
    assert load_settings().queue_order == "fair"
    monkeypatch.setenv("PYARMONIK_QUEUE_ORDER", "fifo")
    assert load_settings().queue_order == "fifo"
    with pytest.raises(ValueError):
        load_settings(queue_order="random")
    database = SqliteDatabase(":memory:")
    for fair in (True, False):
        table = open_queue("table", database, fair=fair)
        broker = open_queue("amqp://127.0.0.1/", database, fair=fair)
        assert isinstance(table, TableQueue) and isinstance(broker, RabbitQueue)
        assert table.fair is fair and broker.fair is fair
