"""Futures (a result id underneath), `wait`, `as_completed`, and the progress bar."""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, CancelledError
from contextlib import contextmanager
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "DoneAndNotDone",
    "Future",
    "as_completed",
    "wait",
]

PENDING, COMPLETED, FAILED, CANCELLED = "pending", "completed", "failed", "cancelled"
_UNSET: Any = object()


class Owner(Protocol):
    """Where a future comes from: a client's Cluster, or the task running in a worker."""

    def check_wait(self) -> None:
        """Raise when waiting is not allowed (inside a task)."""

    def assign_id(self, future: Future[Any]) -> str:
        """A result id for a future that has none yet."""

    def resolve(self, future: Future[Any]) -> Any:
        """The value of a finished future, or raise its error."""

    def cancel(self, future: Future[Any]) -> bool:
        """Cancel the task producing the future."""


class Future(Generic[T]):
    """The result of a task (or of `Cluster.put`), identified by its ArmoniK result id.

    Pass it as an argument to other tasks: it becomes a data dependency, resolved to its
    value in the worker. `result()` waits for it on the client only.
    """

    def __init__(self, owner: Owner, name: str, result_id: str | None = None):
        self._owner = owner
        self.name = name
        self._result_id = result_id
        self._state = PENDING
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._value: Any = _UNSET
        self._data: bytes | None = None  # the pickled value, when it came with the completion
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Future[T]], object]] = []
        # Set while cancel() runs: the task's output is aborted by the cancellation, and its
        # event may arrive before cancel() returns; it must read as cancelled, not failed.
        self._cancelling = False

    @property
    def result_id(self) -> str:
        """The ArmoniK id of the result holding the value."""
        if self._result_id is None:
            self._result_id = self._owner.assign_id(self)
        return self._result_id

    def __repr__(self) -> str:
        return f"<Future {self.name} {self._result_id or '(not submitted)'} {self._state}>"

    def __reduce__(self) -> Any:
        raise TypeError(
            "a pyarmonik Future travels only as an argument of a task (where it becomes a "
            "data dependency) or as the return value of a task"
        )

    # -- concurrent.futures-like API -----------------------------------------------------------

    def done(self) -> bool:
        return self._event.is_set()

    def cancelled(self) -> bool:
        return self._state == CANCELLED

    def cancel(self) -> bool:
        """Cancel the task producing this future (Tasks.CancelTasks); False once done."""
        if self.done():
            return False
        self._cancelling = True
        if not self._owner.cancel(self):
            self._cancelling = False
            return False
        self._finish(CANCELLED)
        return self._state == CANCELLED

    def result(self, timeout: float | None = None) -> T:
        """The value, once the task completed; raises the task's exception if it failed."""
        self._owner.check_wait()
        if not self._event.wait(timeout):
            raise TimeoutError(f"{self!r} not done within {timeout}s")
        if self._state == CANCELLED:
            raise CancelledError(f"{self!r} was cancelled")
        with self._lock:
            if self._value is _UNSET and self._error is None:
                try:
                    self._value = self._owner.resolve(self)
                except Exception as error:
                    self._error = error
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception of a failed task, None if it completed."""
        try:
            self.result(timeout)
        except (TimeoutError, CancelledError):
            raise
        except Exception as error:
            return error
        return None

    def add_done_callback(self, callback: Callable[[Future[T]], object]) -> None:
        """Call `callback(future)` once done (at once if it is; else from a client thread)."""
        self._owner.check_wait()
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        _call(callback, self)

    # -- set by the owner ----------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        return self._state == FAILED

    def _fail(self, error: BaseException) -> None:
        """Fail with `error`, known already (no task will run for this future)."""
        with self._lock:
            if self._error is None and not self._event.is_set():
                self._error = error
        self._finish(FAILED)

    def _finish(self, state: str, value: Any = _UNSET) -> None:
        with self._lock:
            if self._event.is_set():
                return
            if self._cancelling and state == FAILED:
                state = CANCELLED
            self._state, self._value = state, value
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call(callback, self)


def _call(callback: Callable[[Future[Any]], object], future: Future[Any]) -> None:
    try:
        callback(future)
    except Exception:
        log.exception("a done callback of %r raised", future)


class DoneAndNotDone(NamedTuple):
    done: set[Future[Any]]
    not_done: set[Future[Any]]


def _watch(futures: Iterable[Future[Any]]) -> tuple[list[Future[Any]], queue.SimpleQueue[Any]]:
    unique = list(dict.fromkeys(futures))
    finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
    for future in unique:
        future.add_done_callback(finished.put)
    return unique, finished


def as_completed(futures: Iterable[Future[T]], timeout: float | None = None) -> Iterator[Future[T]]:
    """Yield the futures as their tasks finish (TimeoutError after `timeout` seconds)."""
    unique, finished = _watch(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in unique:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
        try:
            yield finished.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError(f"futures not all done within {timeout}s") from None


def wait(
    futures: Iterable[Future[Any]],
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
    progress: bool | None = None,
) -> DoneAndNotDone:
    """Wait for the futures, as `concurrent.futures.wait` does; shows a progress bar when
    `progress` (default: when stdout is a terminal)."""
    unique, finished = _watch(futures)
    done: set[Future[Any]] = set()
    deadline = None if timeout is None else time.monotonic() + timeout
    with progress_bar(len(unique), "tasks", progress) as advance:
        while len(done) < len(unique):
            if return_when == FIRST_COMPLETED and done:
                break
            if return_when == FIRST_EXCEPTION and any(f.failed for f in done):
                break
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
            try:
                done.add(finished.get(timeout=remaining))
            except queue.Empty:
                break
            advance(1)
    return DoneAndNotDone(done, set(unique) - done)


@contextmanager
def progress_bar(total: int, what: str, enabled: bool | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over `total` items (when enabled, default: stdout is a tty);
    yields `advance(n)`."""
    if enabled is None:
        enabled = sys.stdout.isatty()
    if not enabled or total <= 0:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)
