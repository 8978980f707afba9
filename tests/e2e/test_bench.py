"""The `pyarmonik bench` commands, on tiny sizes: each runs its workload to the end and
prints its figures."""

from __future__ import annotations

import importlib.util
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


@pytest.mark.parametrize("link", ["grpcio", "lean"])
def test_ceiling_bench_drives_every_pair(link: str) -> None:
    report = _bench("ceiling", "--tasks", "41", "--agents", "2", "--link", link)
    assert report["agents"] == "2" and report["link"] == link
    assert report["tasks"] == "40"  # split evenly over the pairs
    assert float(report["tasks_per_second"]) > 0


NOT_INSTALLED = "not installed (pip install -e '.[bench]')"


@pytest.mark.parametrize("hidden", ["ray", "dask"])
def test_compare_prints_one_table(hidden: str) -> None:
    """`bench compare` on tiny sizes: pyarmonik always measured; `hidden` made impossible to
    import, so its column says how to install it; the other peer measured when installed."""
    module = {"ray": "ray", "dask": "distributed"}
    blocker = (
        f"import sys; sys.modules[{module[hidden]!r}] = None; sys.argv[0] = 'pyarmonik'; "
        "from pyarmonik.cli.main import main; main()"
    )
    args = ["--tasks", "20", "--depth", "2", "--round-trips", "5", "--payloads", "3"]
    done = subprocess.run(
        [sys.executable, "-c", blocker, "bench", "compare", *args],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    table = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in done.stdout.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]
    header, rows = table[0], table[1:]
    assert [h.split()[0] for h in header] == [
        "workload", "pyarmonik", "ray", "dask", "pyarmonik/ray", "pyarmonik/dask",
    ]  # fmt: skip
    assert len(rows) == 5  # Indep, Graph, round trip p50 and p90, payload
    other = "dask" if hidden == "ray" else "ray"
    installed = importlib.util.find_spec(module[other]) is not None
    column = {name.split()[0]: index for index, name in enumerate(header)}
    for row in rows:
        assert float(row[column["pyarmonik"]].replace(",", "")) > 0
        assert row[column[hidden]] == NOT_INSTALLED
        assert row[column[f"pyarmonik/{hidden}"]] == "—"
        if installed:
            assert float(row[column[other]].replace(",", "")) > 0
            assert float(row[column[f"pyarmonik/{other}"]].strip("*")) > 0
        else:
            assert row[column[other]] == NOT_INSTALLED
    assert "> 1 meaning pyarmonik is faster" in done.stdout


def test_scale_bench_prints_one_row_per_agent_count_and_grouping() -> None:
    """`bench scale` on tiny sizes: a fresh cluster per agent count and agents per process,
    every task run."""
    done = subprocess.run(
        [sys.executable, "-m", "pyarmonik.cli.main", "bench", "scale", "--agents", "1,2",
         "--agents-per-process", "1,2", "--task-ms", "20", "--work-seconds", "0.1",
         "--idle-seconds", "0.5"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    table = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in done.stdout.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]
    header, rows = table[0], table[1:]
    assert header[:6] == ["agents", "per process", "tasks", "ideal (s)", "wall (s)", "efficiency"]
    assert [tuple(row[:3]) for row in rows] == [
        ("1", "1", "5"), ("1", "2", "5"), ("2", "1", "10"), ("2", "2", "10")
    ]  # fmt: skip
    for row in rows:
        assert 0 < float(row[5]) <= 1.5
        assert all(float(cell) >= 0 for cell in row[6:])
