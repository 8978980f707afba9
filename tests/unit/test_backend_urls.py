"""Our own query parameters of backend URLs (`?prefix=`), taken off before the client library
sees the URL."""

from __future__ import annotations

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
