"""Backends from configuration URLs: each adapter found by its URL scheme among the installed
entry points (storage/plugins.py), then assembled."""

from __future__ import annotations

import logging

from pyarmonik.config import Settings
from pyarmonik.scheduling.backends import Backends
from pyarmonik.storage.database import Database
from pyarmonik.storage.objects import ObjectStorage
from pyarmonik.storage.plugins import adapter, scheme_of
from pyarmonik.storage.queue import Queue, unsupported

log = logging.getLogger(__name__)


def open_database(url: str) -> Database:
    opened: Database = adapter("database", url)(url)
    return opened


def open_queue(url: str, database: Database, fair: bool = True) -> Queue:
    """`fair`: turns between sessions within a priority; False: strict FIFO. A queue that
    cannot reorder (see `unsupported` in storage/queue) serves in its own order."""
    queue: Queue = adapter("queue", url)(url, database=database, fair=fair)
    if fair and "fair_share" in unsupported(queue):
        log.warning(
            "the %r queue has no fair share: %s", scheme_of(url), unsupported(queue)["fair_share"]
        )
    return queue


def open_objects(url: str) -> ObjectStorage:
    objects: ObjectStorage = adapter("objects", url)(url)
    return objects


def open_backends(settings: Settings, sharing: Backends | None = None) -> Backends:
    """The backends `settings` name. `sharing`: the database and object storage of these
    (started and closed by their owner), a queue of our own (compute/group.py)."""
    from pyarmonik.storage.objects.inline import InlineObjects

    if sharing is not None:
        database, objects = sharing.database, sharing.objects
    else:
        database = open_database(settings.database_url)
        # Wrapped even with a threshold of 0 (nothing new stored inline): blobs stored in
        # the database under another setting, or by another process, stay readable.
        objects = InlineObjects(
            database, open_objects(settings.objects_url), settings.inline_threshold
        )
    return Backends(
        database=database,
        queue=open_queue(settings.queue_url, database, fair=settings.queue_order == "fair"),
        objects=objects,
        partitions=[p.record() for p in settings.partition_list()],
        default_partition=settings.default_partition,
        shares_storage=sharing is not None,
    )
