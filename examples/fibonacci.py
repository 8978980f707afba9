"""Recursive Fibonacci where every call is a task, built by delegation only.

fib(n) submits fib(n-1) and fib(n-2) and hands its own output over to an `add` task that
depends on both: no worker ever waits for another, and fib(n) takes about 3·fib(n) tasks.

    python examples/fibonacci.py 15                             # on a local cluster
    python examples/fibonacci.py 15 --endpoint 127.0.0.1:5001   # on a running one
"""

from __future__ import annotations

import argparse
import time

from pyarmonik import Cluster, Future, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def fib(n: int) -> int | Future[int]:
    if n < 2:
        return n
    return add.delegate(fib.submit(n - 1), fib.submit(n - 2))


def run(cluster: Cluster, n: int) -> int:
    with cluster.as_current():
        return fib.submit(n).result()  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("n", type=int, nargs="?", default=15)
    parser.add_argument("--endpoint", help="a running cluster (default: start a local one)")
    args = parser.parse_args()
    start = time.monotonic()
    with Cluster.connect(args.endpoint) if args.endpoint else Cluster.local() as cluster:
        value = run(cluster, args.n)
        tasks = sum(cluster.session.counts().values())
    print(f"fib({args.n}) = {value}: {tasks} tasks in {time.monotonic() - start:.1f}s")


if __name__ == "__main__":
    main()
