"""The `pyarmonik bench` commands, on tiny sizes: each runs its workload to the end and
prints its figures."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _bench(*args: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "pyarmonik.cli.main", "bench", *args],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return dict(line.strip().split(": ", 1) for line in done.stdout.splitlines() if ": " in line)


@pytest.mark.parametrize(
    ("args", "workload", "tasks"),
    [
        (["indep", "--tasks", "40"], "indep", 40),
        (["graph", "--depth", "3"], "graph", 22),
        (["graph", "--sdk", "--depth", "3"], "graph-sdk", 22),
        (["fib", "--n", "6"], "fib-sdk(6)", 37),
    ],
)
def test_workload_benches(args: list[str], workload: str, tasks: int) -> None:
    report = _bench(*args, "--agents", "1")
    assert report["workload"] == workload
    assert int(report["tasks"]) == tasks
    assert float(report["tasks_per_second"]) > 0
    assert float(report["latency_p99_ms"]) >= float(report["latency_p50_ms"]) > 0


def test_ceiling_bench_drives_every_pair() -> None:
    report = _bench("ceiling", "--tasks", "41", "--agents", "2")
    assert report["agents"] == "2"
    assert report["tasks"] == "40"  # split evenly over the pairs
    assert float(report["tasks_per_second"]) > 0
