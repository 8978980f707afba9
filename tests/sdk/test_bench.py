"""`pyarmonik bench graph --sdk` and `pyarmonik bench fib`, on tiny sizes."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("args", "workload", "tasks"),
    [
        (["graph", "--sdk", "--depth", "3"], "graph-sdk", 22),
        (["fib", "--n", "6"], "fib-sdk(6)", 37),
    ],
)
def test_sdk_bench_cases(args: list[str], workload: str, tasks: int) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pyarmonik.cli.main", "bench", *args, "--agents", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    report = dict(line.strip().split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert report["workload"] == workload
    assert int(report["tasks"]) == tasks
    assert float(report["tasks_per_second"]) > 0
