"""The three ports bundled, as every service of the scheduler needs them."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from pyarmonik.domain.records import Partition
from pyarmonik.storage.database import Database
from pyarmonik.storage.objects import ObjectStorage
from pyarmonik.storage.queue import Queue, TransactionalQueue


@dataclass
class Backends:
    database: Database
    queue: Queue
    objects: ObjectStorage
    partitions: list[Partition] = field(default_factory=list)
    default_partition: str = "default"
    # The database and object storage are shared with other agents of the process and
    # started and closed by it (compute/group.py): `start` and `close` are the queue's only.
    shares_storage: bool = False

    @functools.cached_property
    def queue_in_database(self) -> TransactionalQueue | None:
        """The queue when it is a table of the database (then queue work joins the database
        transactions: messages commit with their tasks), else None. Looked up once: a
        protocol check costs more than the statement it decides about."""
        queue = self.queue
        if isinstance(queue, TransactionalQueue) and queue.shares(self.database):
            return queue
        return None

    async def start(self) -> None:
        if not self.shares_storage:
            await self.database.start()
        await self.queue.start()
        if not self.shares_storage:
            await self.objects.start()

    async def close(self) -> None:
        await self.queue.close()
        if not self.shares_storage:
            await self.objects.close()
            await self.database.close()


def now() -> float:
    return time.time()
