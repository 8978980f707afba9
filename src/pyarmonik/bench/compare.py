"""`pyarmonik bench compare`: the same workloads on pyarmonik's SDK, Ray and Dask, in one run.

Every engine gets 2 worker processes of one thread each, is started inside the run on
127.0.0.1 only, warmed up, measured, and shut down. pyarmonik runs on a fresh
`pyarmonik local` cluster (embedded backends, data in a fresh temporary folder), as the
other bench commands. Ray and Dask come with the optional extra `pyarmonik[bench]`; an engine
that is not installed gets a "not installed" column, never a crash.

Workloads: Indep (N no-op tasks submitted at once, first submit → last result), Graph (a
nested fork-join of depth D: pyarmonik delegates, Ray and Dask wait inside their tasks),
round trip (`f.submit(x).result()` of a tiny task, one after the other) and payload (M tasks,
each given its own 1 MiB of bytes, returning their length).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pyarmonik.bench import sdk as workloads
from pyarmonik.bench.run import SDK_WORKER, Cluster
from pyarmonik.sdk import Cluster as SdkCluster
from pyarmonik.sdk import Future
from pyarmonik.sdk import wait as sdk_wait

ENGINES = ("pyarmonik", "ray", "dask")
PEERS = ("ray", "dask")
WORKERS = 2  # processes per engine, one thread each
MIB = 1024 * 1024
TIMEOUT = 600.0  # seconds, for any one workload
NOT_INSTALLED = "not installed (pip install -e '.[bench]')"
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    tasks: int = 5000  # Indep
    depth: int = 10  # Graph: 2^(D+1) - 1 fork-join nodes
    round_trips: int = 200
    payloads: int = 200  # 1 MiB each

    @property
    def nodes(self) -> int:
        return (1 << (self.depth + 1)) - 1


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    higher_is_better: bool
    digits: int


def rows(sizes: Sizes) -> list[Row]:
    trips = f"round trip of a tiny task, {{}} of {sizes.round_trips} (ms)"
    return [
        Row("indep", f"Indep: {sizes.tasks:,} no-op tasks (tasks/s)", True, 0),
        Row("graph", f"Graph: fork-join of depth {sizes.depth} (nodes/s)", True, 0),
        Row("round_trip_p50", trips.format("p50"), False, 1),
        Row("round_trip_p90", trips.format("p90"), False, 1),
        Row("payload", f"payload: {sizes.payloads} tasks given 1 MiB each (MiB/s)", True, 0),
    ]


Figures = dict[str, float]


class _Workloads(Protocol):
    """One engine's side of each workload; every call waits for its results."""

    def noops(self, count: int) -> int:
        """`count` no-op tasks submitted at once; how many results came back."""

    def round_trip(self, index: int) -> None:
        """One tiny task, submitted and waited for."""

    def graph(self, depth: int) -> int:
        """The fork-join of `depth`; its root's value (2^depth)."""

    def lengths(self, blobs: list[bytes]) -> list[int]:
        """One task per blob, which returns its length."""


def _check(name: str, value: object, expected: object) -> None:
    if value != expected:
        raise RuntimeError(f"{name} returned {value!r}, expected {expected!r}")


def _measure(engine: _Workloads, sizes: Sizes) -> Figures:
    """The four workloads, one after the other, after the same warm-up on every engine."""
    engine.noops(4 * WORKERS)
    engine.graph(min(sizes.depth, 3))  # what a fork-join needs started (Ray: more workers)
    figures: Figures = {}
    spans = []
    for index in range(sizes.round_trips):
        start = time.perf_counter()
        engine.round_trip(index)
        spans.append((time.perf_counter() - start) * 1000)
    deciles = statistics.quantiles(spans, n=10) if len(spans) > 1 else spans * 9
    figures["round_trip_p50"] = statistics.median(spans)
    figures["round_trip_p90"] = deciles[8]
    start = time.perf_counter()
    _check("indep", engine.noops(sizes.tasks), sizes.tasks)
    figures["indep"] = sizes.tasks / (time.perf_counter() - start)
    start = time.perf_counter()
    _check("graph", engine.graph(sizes.depth), 1 << sizes.depth)
    figures["graph"] = sizes.nodes / (time.perf_counter() - start)
    base = os.urandom(MIB)  # every task its own MiB: no engine may share one upload
    blobs = [index.to_bytes(8, "little") + base[8:] for index in range(sizes.payloads)]
    start = time.perf_counter()
    _check("payload", engine.lengths(blobs), [MIB] * sizes.payloads)
    figures["payload"] = sizes.payloads / (time.perf_counter() - start)
    return figures


# -- pyarmonik: the Pythonic SDK on a fresh `pyarmonik local` cluster ------------------------


class _Pyarmonik:
    def noops(self, count: int) -> int:
        return len(_sdk_results(workloads.noop.map(range(count), progress=False)))

    def round_trip(self, index: int) -> None:
        workloads.noop.submit(index).result(TIMEOUT)

    def graph(self, depth: int) -> int:
        return workloads.node.submit(depth).result(TIMEOUT)  # by delegation

    def lengths(self, blobs: list[bytes]) -> list[int]:
        return _sdk_results(workloads.length.map(blobs, progress=False))


def _sdk_results(futures: list[Future[T]]) -> list[T]:
    sdk_wait(futures, timeout=TIMEOUT, progress=False)
    return [future.result(TIMEOUT) for future in futures]


def run_pyarmonik(sizes: Sizes) -> Figures:
    """On a fresh `pyarmonik local` (embedded backends, data in a fresh temporary folder) with
    the SDK's function worker, started as `bench graph --sdk` starts it."""
    with (
        Cluster(WORKERS, [], worker=SDK_WORKER) as cluster,
        SdkCluster.connect(cluster.endpoint, max_duration=TIMEOUT) as sdk,
        sdk.as_current(),
    ):
        return _measure(_Pyarmonik(), sizes)


# -- Ray: remote functions, nested fork-join with ray.get inside the tasks -------------------


def _noop(index: int) -> None:
    """Indep and the round trip on Ray and Dask."""


def _length(data: bytes) -> int:
    return len(data)


@functools.cache
def _ray_remote(function: Callable[..., Any]) -> Any:
    """The Ray remote function of `function`, made once per process (driver or worker)."""
    import ray

    return ray.remote(function)


def _ray_node(depth: int) -> int:
    """Graph on Ray: two subtasks, waited for inside the task (the usual fork-join)."""
    import ray

    if depth == 0:
        return 1
    node = _ray_remote(_ray_node)
    return sum(ray.get([node.remote(depth - 1), node.remote(depth - 1)]))


class _Ray:
    def __init__(self) -> None:
        import ray

        self.ray = ray
        self.noop, self.node, self.length = map(_ray_remote, (_noop, _ray_node, _length))

    def noops(self, count: int) -> int:
        return len(self.ray.get([self.noop.remote(i) for i in range(count)], timeout=TIMEOUT))

    def round_trip(self, index: int) -> None:
        self.ray.get(self.noop.remote(index), timeout=TIMEOUT)

    def graph(self, depth: int) -> int:
        return self.ray.get(self.node.remote(depth), timeout=TIMEOUT)  # type: ignore[no-any-return]

    def lengths(self, blobs: list[bytes]) -> list[int]:
        return self.ray.get([self.length.remote(b) for b in blobs], timeout=TIMEOUT)  # type: ignore[no-any-return]


def run_ray(sizes: Sizes) -> Figures:
    """On a local Ray instance of `num_cpus` 2, started for the run; its folder removed after."""
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing leaves the machine
    folder = tempfile.mkdtemp(prefix="pyarmonik-ray-")
    try:
        ray.init(address="local", num_cpus=WORKERS, include_dashboard=False,
                 _node_ip_address="127.0.0.1", _temp_dir=folder, log_to_driver=False,
                 logging_level=logging.ERROR)  # fmt: skip
        return _measure(_Ray(), sizes)
    finally:
        ray.shutdown()
        for _ in range(20):  # its last processes may still be writing their logs there
            shutil.rmtree(folder, ignore_errors=True)
            if not os.path.exists(folder):
                break
            time.sleep(0.5)


# -- Dask: distributed futures, nested fork-join with secede/rejoin (worker_client) ----------


def _dask_node(depth: int) -> int:
    """Graph on Dask: two subtasks, gathered inside the task, which leaves the worker's
    thread pool while it waits (`worker_client` secedes and rejoins)."""
    from distributed import worker_client

    if depth == 0:
        return 1
    with worker_client() as client:
        left = client.submit(_dask_node, depth - 1, pure=False)
        right = client.submit(_dask_node, depth - 1, pure=False)
        return sum(client.gather([left, right]))


class _Dask:
    def __init__(self, client: Any):
        self.client = client

    def _mapped(self, function: Callable[..., Any], items: Any) -> list[Any]:
        from distributed import wait

        futures = self.client.map(function, items, pure=False)
        wait(futures, timeout=TIMEOUT)
        return self.client.gather(futures)  # type: ignore[no-any-return]

    def noops(self, count: int) -> int:
        return len(self._mapped(_noop, range(count)))

    def round_trip(self, index: int) -> None:
        self.client.submit(_noop, index, pure=False).result(TIMEOUT)

    def graph(self, depth: int) -> int:
        return self.client.submit(_dask_node, depth, pure=False).result(TIMEOUT)  # type: ignore[no-any-return]

    def lengths(self, blobs: list[bytes]) -> list[int]:
        return self._mapped(_length, blobs)


def run_dask(sizes: Sizes) -> Figures:
    """On a `LocalCluster` of 2 worker processes of one thread, started for the run; its
    temporary folder removed after."""
    import dask
    from distributed import Client, LocalCluster

    folder = tempfile.mkdtemp(prefix="pyarmonik-dask-")
    try:
        with (
            # "Sending large graph of size …": sending the data is the payload workload's point
            warnings.catch_warnings(action="ignore", category=UserWarning),
            dask.config.set({"temporary-directory": folder}),
            LocalCluster(
                n_workers=WORKERS,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster, timeout=60) as client,
        ):
            return _measure(_Dask(client), sizes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the comparison -----------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Sizes], Figures]] = {
    "pyarmonik": run_pyarmonik,
    "ray": run_ray,
    "dask": run_dask,
}
MODULES = {"ray": "ray", "dask": "distributed"}


def version(engine: str) -> str | None:
    """The engine's version, None when it cannot be imported."""
    if engine == "pyarmonik":
        from importlib.metadata import version as installed

        return installed("pyarmonik")
    try:
        module = __import__(MODULES[engine])
    except ImportError:
        return None
    return str(getattr(module, "__version__", "?"))


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """What the engines print while they run goes to stderr; stdout is the table."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def measure(engines: list[str], sizes: Sizes) -> dict[str, Figures | str]:
    """Each engine's figures, or the reason it has none (not installed, failed)."""
    measured: dict[str, Figures | str] = {}
    for engine in engines:
        if version(engine) is None:
            measured[engine] = NOT_INSTALLED
            continue
        print(f"bench compare: {engine}…", file=sys.stderr, flush=True)
        try:
            with _stdout_to_stderr():
                measured[engine] = RUNNERS[engine](sizes)
        except Exception as error:
            traceback.print_exc()
            measured[engine] = f"failed: {type(error).__name__}"
    return measured


def _cell(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def table(measured: dict[str, Figures | str], sizes: Sizes) -> list[str]:
    """The Markdown table: one column per engine, then pyarmonik's speedup over each peer."""
    engines = list(measured)
    peers = [e for e in engines if e != "pyarmonik"] if "pyarmonik" in measured else []
    headers = ["workload"] + [
        f"{engine} {version(engine)}" if isinstance(measured[engine], dict) else engine
        for engine in engines
    ] + [f"pyarmonik/{peer}" for peer in peers]  # fmt: skip
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows(sizes):
        cells = [row.label]
        for engine in engines:
            figures = measured[engine]
            cells.append(
                figures if isinstance(figures, str) else _cell(figures[row.key], row.digits)
            )
        ours = measured.get("pyarmonik")
        for peer in peers:
            theirs = measured[peer]
            if isinstance(ours, dict) and isinstance(theirs, dict):
                a, b = ours[row.key], theirs[row.key]
                cells.append(f"**{(a / b if row.higher_is_better else b / a):.2f}**")
            else:
                cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    if peers:
        lines += [
            "",
            "Ratios are pyarmonik's speed-up over the peer, > 1 meaning pyarmonik is faster: "
            "pyarmonik/peer for rates, peer/pyarmonik for round-trip times.",
        ]
    lines += [
        f"Each engine: {WORKERS} worker processes of one thread (Ray num_cpus={WORKERS}, Dask "
        f"LocalCluster n_workers={WORKERS}, pyarmonik {WORKERS} agent/worker pairs, embedded "
        "backends, data on disk), started and warmed up in this run. Graph counts fork-join "
        f"nodes ({sizes.nodes:,}): pyarmonik runs them as {3 * 2**sizes.depth - 2:,} tasks "
        "(an aggregation task per inner node, by delegation), Ray and Dask as "
        f"{sizes.nodes:,} tasks that wait for their children.",
    ]
    return lines


def compare(engines: list[str], sizes: Sizes) -> list[str]:
    return table(measure(engines, sizes), sizes)
