"""The queue port: ready task ids, one queue per partition, higher priority first.

Within a partition and a priority, a queue shares turns between sessions (each push names
the session of its messages), so a small session is not stuck behind a big one; built with
`fair=False` it serves them in arrival order instead (ArmoniK's strict FIFO).

Delivery is at least once: a pulled message is invisible until acked, released, or its
lease expires (its consumer died); the scheduler makes every handler idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pyarmonik.storage.database import Repository


@dataclass(frozen=True)
class QueueMessage:
    """A pulled message; `receipt` identifies this delivery for ack/release/extend."""

    task_id: str
    partition_id: str
    receipt: str


class Queue(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def check_health(self) -> None:
        """Raise if the queue cannot be used now."""
        ...

    async def push(
        self, partition_id: str, messages: list[tuple[str, int]], session_id: str = ""
    ) -> None:
        """Enqueue (task_id, priority) pairs of one session on a partition."""
        ...

    async def pull(
        self, partition_id: str, count: int, lease: float, wait: bool = True
    ) -> list[QueueMessage]:
        """Take up to `count` visible messages, invisible to others for `lease` seconds.
        `wait=False`: return at once when none is at hand (a broker's pull waits a little
        for the first one otherwise)."""
        ...

    async def ack(self, messages: list[QueueMessage]) -> None:
        """Remove delivered messages for good."""
        ...

    async def release(self, messages: list[QueueMessage], delay: float = 0.0) -> None:
        """Give messages back, visible again after `delay` seconds."""
        ...

    async def extend(self, messages: list[QueueMessage], lease: float) -> None:
        """Keep messages invisible for `lease` more seconds (a long task is still running)."""
        ...

    async def depth(self, partition_id: str) -> int:
        """Messages waiting on a partition (visible or not yet acked)."""
        ...


@runtime_checkable
class TransactionalQueue(Protocol):
    """A queue kept in the database itself works inside a database transaction: messages
    commit with the tasks they announce, a delivery with its task's acquisition, a task's
    completion with its message's removal."""

    def shares(self, database: object) -> bool:
        """True when this queue lives in `database`."""
        ...

    async def push_within(
        self,
        repository: Repository,
        partition_id: str,
        messages: list[tuple[str, int]],
        session_id: str = "",
    ) -> None: ...

    async def next_visible(self, partition_ids: list[str]) -> float | None:
        """When a message of these partitions is visible next (time.time(); in the past when
        one is visible now; None: no message at all). A read, no lock taken."""
        ...

    async def visible(self, partition_id: str) -> bool:
        """Whether a message is visible on the partition now (a read, no lock taken)."""
        ...

    async def pull_within(
        self, repository: Repository, partition_id: str, count: int, lease: float
    ) -> list[QueueMessage]: ...

    async def ack_within(self, repository: Repository, messages: list[QueueMessage]) -> None: ...

    async def reclaim_within(self, repository: Repository, task_ids: list[str]) -> None:
        """Make the messages of these tasks visible now, whoever holds them (a dead agent)."""
        ...


# What a queue cannot do, declared by the adapter as a class attribute
# `unsupported: Mapping[str, str]` (capability -> why), read with `unsupported(queue)`:
# the contract suite skips the cases of a declared capability with that reason, and
# open_queue logs it. Capabilities: "fair_share" (turns between sessions within a priority),
# "arrival_order" (FIFO within a priority), "priority" (higher priority served first).
CAPABILITIES = ("fair_share", "arrival_order", "priority")


def unsupported(queue: object) -> Mapping[str, str]:
    """The capabilities `queue` declares it lacks, with the reason (none for most)."""
    declared: Mapping[str, str] = getattr(queue, "unsupported", {})
    return declared
