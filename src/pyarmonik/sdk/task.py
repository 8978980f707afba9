"""The `@task` decorator: a function that runs as an ArmoniK task."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from pyarmonik.sdk.futures import Future

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Options:
    """Task options set by `@task(...)`; unset ones fall back to the session's defaults."""

    partition: str | None = None
    priority: int | None = None
    max_retries: int | None = None
    max_duration: timedelta | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    def is_default(self) -> bool:
        return self == Options()


class TaskFunction(Generic[P, R]):
    """A function that runs on the cluster. Call it to run it here; `submit` it to run it
    as a task (on the client, or inside another task); `delegate` it inside a task to hand
    that task's output over to it."""

    def __init__(self, function: Callable[P, Any], options: Options):
        self.function = function
        self.task_options = options
        self.name = getattr(function, "__qualname__", repr(function))
        functools.update_wrapper(self, function)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, as a plain call."""
        return self.function(*args, **kwargs)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    def options(self, **overrides: Any) -> TaskFunction[P, R]:
        """This task with other options (same names as `@task`)."""
        return TaskFunction(self.function, replace(self.task_options, **_checked(overrides)))

    def submit(self, *args: Any, **kwargs: Any) -> Future[R]:
        """Run as a task; futures among the arguments (also in lists, tuples, dicts) become
        data dependencies and reach the function as their values."""
        from pyarmonik.sdk.context import submitter

        return submitter().submit_task(self, args, kwargs)

    def map(
        self,
        *iterables: Iterable[Any],
        batch_size: int = 1000,
        progress: bool | None = None,
    ) -> list[Future[R]]:
        """One task per item (per tuple of items with several iterables, as `map`),
        submitted in batches; a progress bar when stdout is a terminal."""
        from pyarmonik.sdk.context import submitter

        return submitter().map_tasks(self, zip(*iterables, strict=False), batch_size, progress)

    def delegate(self, *args: Any, **kwargs: Any) -> Future[R]:
        """Inside a task: submit this task and hand it the current task's output (return the
        future this gives). The current task then ends without waiting."""
        from pyarmonik.sdk.context import current_task

        context = current_task()
        if context is None:
            raise RuntimeError(
                "delegate() hands the output of the running task over, so it only works "
                "inside a task; use submit() on the client"
            )
        return context.delegate(self, args, kwargs)


def _checked(options: dict[str, Any]) -> dict[str, Any]:
    known = {"partition", "priority", "max_retries", "max_duration", "options"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown task options: {', '.join(sorted(unknown))}")
    duration = options.get("max_duration")
    if duration is not None and not isinstance(duration, timedelta):
        options["max_duration"] = timedelta(seconds=float(duration))
    if "options" in options:
        options["options"] = dict(options["options"] or {})
    return options


class _Decorator(Protocol):
    @overload
    def __call__(self, function: Callable[P, Future[R]], /) -> TaskFunction[P, R]: ...
    @overload
    def __call__(self, function: Callable[P, R | Future[R]], /) -> TaskFunction[P, R]: ...


# A task that delegates returns a Future[R] (or R | Future[R]): its futures hold an R.
@overload
def task(function: Callable[P, Future[R]], /) -> TaskFunction[P, R]: ...
@overload
def task(function: Callable[P, R | Future[R]], /) -> TaskFunction[P, R]: ...
@overload
def task(
    *,
    partition: str | None = None,
    priority: int | None = None,
    max_retries: int | None = None,
    max_duration: timedelta | float | None = None,
    options: Mapping[str, str] | None = None,
) -> _Decorator: ...


def task(function: Callable[..., Any] | None = None, /, **settings: Any) -> Any:
    """Make a function an ArmoniK task: `@task`, or `@task(partition=..., priority=...,
    max_retries=..., max_duration=seconds or timedelta, options={...})`."""
    options = Options(**_checked({k: v for k, v in settings.items() if v is not None}))
    if function is not None:
        return TaskFunction(function, options)
    return lambda f: TaskFunction(f, options)
