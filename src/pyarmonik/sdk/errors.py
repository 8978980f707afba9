"""Exceptions of the Pythonic SDK."""

from __future__ import annotations


class TaskError(Exception):
    """A task failed without an exception that can be raised again on the client: it timed
    out, was cancelled, crashed more often than its retries allow, or raised an exception
    whose type does not exist here."""


class PayloadError(TaskError):
    """The function worker could not load a task: not a pyarmonik payload, Python or
    cloudpickle versions that differ from the client's, or a function it cannot import."""


class WaitInsideTaskError(RuntimeError):
    """A task tried to wait for a future: workers never block on other tasks."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a task (set as the `__cause__` of the
    exception raised again on the client, so that both show)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'
