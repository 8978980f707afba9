"""The Pythonic SDK: `@task` functions submitted to a `Cluster` give futures; futures
passed to other tasks become data dependencies; tasks submit tasks and delegate their
output. See docs/sdk.md."""

from pyarmonik.sdk.cluster import Cluster, Session
from pyarmonik.sdk.errors import PayloadError, RemoteTraceback, TaskError, WaitInsideTaskError
from pyarmonik.sdk.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Future,
    as_completed,
    wait,
)
from pyarmonik.sdk.task import TaskFunction, task

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Cluster",
    "Future",
    "PayloadError",
    "RemoteTraceback",
    "Session",
    "TaskError",
    "TaskFunction",
    "WaitInsideTaskError",
    "as_completed",
    "task",
    "wait",
]
