"""Identifiers: random GUIDs, and ArmoniK's deterministic retry ids."""

from __future__ import annotations

import uuid

RETRY_SEPARATOR = "###"


def new_id() -> str:
    return str(uuid.uuid4())


def retry_id(initial_task_id: str, attempt: int) -> str:
    """Id of the `attempt`-th retry of a task (attempt ≥ 1), as ArmoniK names it."""
    return f"{initial_task_id}{RETRY_SEPARATOR}{attempt}"
