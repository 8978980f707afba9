"""Identifiers: time-ordered GUIDs, and ArmoniK's deterministic retry ids.

Ids are UUIDs of version 7 (RFC 9562): the creation time in milliseconds comes first, then
74 random bits. They are GUIDs to every client, as ArmoniK's are; being ordered by time, the
rows and index entries made together (a submission, the outputs of a batch of tasks) sit
together in the database's b-trees: a commit writes a few pages where random ids wrote one
page per id (docs/performance.md, twelfth session).
"""

from __future__ import annotations

import os
import time
import uuid

RETRY_SEPARATOR = "###"
_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0x2 << 62
_CLEAR = ~((0xF << 76) | (0x3 << 62))


def time_ordered_uuid() -> uuid.UUID:
    """A version-7 UUID: milliseconds since the epoch, then random bits."""
    milliseconds = time.time_ns() // 1_000_000
    value = (milliseconds & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10))
    return uuid.UUID(int=value & _CLEAR | _VERSION_7 | _VARIANT_RFC)


def new_id() -> str:
    return str(time_ordered_uuid())


def retry_id(initial_task_id: str, attempt: int) -> str:
    """Id of the `attempt`-th retry of a task (attempt ≥ 1), as ArmoniK names it."""
    return f"{initial_task_id}{RETRY_SEPARATOR}{attempt}"
