"""The three ports bundled, as every service of the scheduler needs them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pyarmonik.domain.records import Partition
from pyarmonik.storage.database import Database
from pyarmonik.storage.objects import ObjectStorage
from pyarmonik.storage.queue import Queue


@dataclass
class Backends:
    database: Database
    queue: Queue
    objects: ObjectStorage
    partitions: list[Partition] = field(default_factory=list)
    default_partition: str = "default"

    async def start(self) -> None:
        await self.database.start()
        await self.queue.start()
        await self.objects.start()

    async def close(self) -> None:
        await self.queue.close()
        await self.objects.close()
        await self.database.close()


def now() -> float:
    return time.time()
