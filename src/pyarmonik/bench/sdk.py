"""The benchmarks' workloads written with the Pythonic SDK (run by the function worker;
this module is importable on the workers, so its functions travel by reference)."""

from __future__ import annotations

from pyarmonik.sdk import Future, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def node(depth: int) -> int | Future[int]:
    """Graph: a nested fork-join. Two subtasks, and an aggregation that inherits our output."""
    if depth == 0:
        return 1
    return add.delegate(node.submit(depth - 1), node.submit(depth - 1))


@task
def fib(n: int) -> int | Future[int]:
    if n < 2:
        return n
    return add.delegate(fib.submit(n - 1), fib.submit(n - 2))


def fib_tasks(n: int) -> int:
    """Tasks fib(n) makes: one per call, plus one `add` per call with n >= 2."""
    a, b = 1, 1  # tasks of fib(0), fib(1)
    for _ in range(n - 1):
        a, b = b, a + b + 2
    return b if n >= 1 else a


@task
def noop(index: int) -> None:
    """Indep and the round trip: a task that does nothing."""


@task
def length(data: bytes) -> int:
    """Payload throughput: a task that receives bytes and returns their length."""
    return len(data)
