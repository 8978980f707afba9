"""The chaos suite's workload, shared by the test (expected values) and its worker (computed
values): binary fork-join trees built by output delegation.

A node of depth d > 0 submits its two children (heap indices 2i and 2i+1) and a join task
that takes over the node's output; a leaf writes a value derived from its index and the
run's salt; a join combines its two inputs in order (so swapped or stale inputs show up).
Values are decimal text, the same bytes on every attempt: a result written twice with
different data is a defect, not a retry."""

from __future__ import annotations

MODULUS = 1_000_000_007


def leaf_value(salt: int, index: int) -> int:
    return (index * 2_654_435_761 + salt) % MODULUS


def join_value(left: int, right: int) -> int:
    return (left * 31 + right * 37 + 1) % MODULUS


def tree_value(salt: int, depth: int, index: int = 1) -> int:
    """The value of the node `index` of depth `depth`: what its output must hold."""
    if depth == 0:
        return leaf_value(salt, index)
    return join_value(
        tree_value(salt, depth - 1, 2 * index), tree_value(salt, depth - 1, 2 * index + 1)
    )


def tree_tasks(depth: int) -> int:
    """Tasks a tree of `depth` runs when nothing fails: its nodes and its joins."""
    return (2 ** (depth + 1) - 1) + (2**depth - 1)


def leaf_sleep(salt: int, index: int) -> float:
    """Seconds a leaf works (10 to 190 ms): workers are mostly busy when they are killed."""
    return 0.01 + ((index * 7 + salt) % 10) * 0.02
