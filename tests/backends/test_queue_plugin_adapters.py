"""What the queue plugins of plugins/ do beyond the shared contract (which runs on them in
test_queue_contract.py): their URLs, names and priority levels, and failing clearly."""

from __future__ import annotations

from typing import Any

import pytest

from pyarmonik.domain.errors import Unavailable
from pyarmonik.storage.queue import unsupported
from tests.backends.conftest_queue_objects import PLUGINS, require_plugin

pytestmark = pytest.mark.timeout(60)


def plugin(scheme: str) -> Any:
    """The plugin's module (skipped, or failed when CI=true, when it is not installed)."""
    require_plugin("queue", scheme, PLUGINS[scheme])
    return pytest.importorskip(f"pyarmonik_{scheme}")


@pytest.mark.parametrize("scheme", sorted(PLUGINS))
def test_levels_are_monotonic_and_bounded(scheme: str) -> None:
    module = plugin(scheme)
    queue = (module.NatsQueue if scheme == "nats" else module.SqsQueue)(
        f"{scheme}://127.0.0.1/?levels=4"
    )
    levels = [queue.level(priority) for priority in range(-5, 130)]
    assert levels == sorted(levels)
    assert queue.level(1) == 0 and queue.level(99) == 3 and set(levels) == {0, 1, 2, 3}
    assert "fair_share" in unsupported(queue)


@pytest.mark.parametrize("scheme", sorted(PLUGINS))
def test_partition_names_stay_distinct_and_legal(scheme: str) -> None:
    token = plugin(scheme)._token
    names = ["default", "a.b", "a_b", "a b", "é", "x" * 200, "x" * 201]
    tokens = [token(name) for name in names]
    assert tokens[0] == "default"
    assert len(set(tokens)) == len(names)
    assert all(t and all(c.isalnum() or c in "_-" for c in t) for t in tokens)


async def test_nats_unreachable_names_host_not_password() -> None:
    module = plugin("nats")
    with pytest.raises(Unavailable) as caught:
        await module.NatsQueue("nats://user:s3cret@127.0.0.1:1").start()
    assert "127.0.0.1:1" in str(caught.value) and "s3cret" not in str(caught.value)


async def test_sqs_unreachable_names_endpoint_not_secret() -> None:
    module = plugin("sqs")
    queue = module.SqsQueue("sqs://key:s3cret@us-east-1/?endpoint=http://127.0.0.1:1")
    with pytest.raises(Unavailable) as caught:
        await queue.start()
    assert "http://127.0.0.1:1" in str(caught.value) and "s3cret" not in str(caught.value)
