"""A parameter sweep with a reduction tree: find the grid point that minimises a function.

Each task evaluates one slice of the grid; pairs of partial minima are then merged by
`best` tasks, level after level, until one remains. The whole tree is submitted at once
(futures are passed as arguments, so they are data dependencies); only the root is awaited.

    python examples/sweep.py --size 64 --slices 16 [--endpoint 127.0.0.1:5001]
"""

from __future__ import annotations

import argparse

from pyarmonik import Cluster, Future, task

Point = tuple[float, float, float]  # (value, x, y)


def himmelblau(x: float, y: float) -> float:
    return (x * x + y - 11) ** 2 + (x + y * y - 7) ** 2


def grid(size: int) -> list[float]:
    return [-5 + 10 * i / (size - 1) for i in range(size)]


@task
def evaluate(xs: list[float], ys: list[float]) -> Point:
    """The minimum over a slice of the grid."""
    return min((himmelblau(x, y), x, y) for x in xs for y in ys)


@task
def best(a: Point, b: Point) -> Point:
    return min(a, b)


def reduce_tree(futures: list[Future[Point]]) -> Future[Point]:
    """Merge pairs, level by level: log2(n) levels of tasks, none waiting on the client."""
    while len(futures) > 1:
        pairs = [best.submit(a, b) for a, b in zip(futures[::2], futures[1::2], strict=False)]
        futures = pairs + futures[len(pairs) * 2 :]
    return futures[0]


def run(cluster: Cluster, size: int, slices: int) -> Point:
    xs, ys = grid(size), grid(size)
    step = -(-size // slices)
    with cluster.as_current():
        partial = evaluate.map([xs[i : i + step] for i in range(0, size, step)], [ys] * slices)
        return reduce_tree(partial).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--endpoint", help="a running cluster (default: start a local one)")
    args = parser.parse_args()
    with Cluster.connect(args.endpoint) if args.endpoint else Cluster.local() as cluster:
        value, x, y = run(cluster, args.size, args.slices)
    print(f"minimum {value:.6f} at ({x:.4f}, {y:.4f})")


if __name__ == "__main__":
    main()
