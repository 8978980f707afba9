"""The Pythonic SDK against `pyarmonik local` and its default worker, the function worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest
from armonik.common import TaskStatus

import pyarmonik
from pyarmonik import Cluster, Future, as_completed, task, wait
from pyarmonik.control import sdk_service
from pyarmonik.sdk import FIRST_COMPLETED, RemoteTraceback, TaskError, WaitInsideTaskError
from tests.helpers import REPO
from tests.sdk.support import by_value, function_worker_cluster

by_value(__name__)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with (
        function_worker_cluster(tmp_path_factory.mktemp("sdk")) as running,
        Cluster.connect(running.endpoint, max_duration=120, max_retries=2) as connected,
    ):
        yield connected


class Oops(Exception):
    """An exception type of the test module (rebuilt on the client by its type)."""


@task
def square(x: float) -> float:
    return x * x


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def total(values: Any) -> int:
    """Sums the numbers anywhere in nested lists, tuples and dicts."""
    if isinstance(values, dict):
        return sum(total(v) for v in values.values())
    if isinstance(values, list | tuple):
        return sum(total(v) for v in values)
    return int(values)


@task
def fib(n: int) -> int | Future[int]:
    if n < 2:
        return n
    return add.delegate(fib.submit(n - 1), fib.submit(n - 2))


def owner_task(cluster: Cluster, future: Future[Any]) -> Any:
    owner = cluster._results.get_owner_task_id([future.result_id], cluster.session.id)
    return cluster._tasks.get_task(owner[future.result_id])


def test_submit_and_result(cluster: Cluster) -> None:
    future = square.submit(7)
    assert future.result(timeout=60) == 49
    assert future.done() and not future.cancelled()
    assert cluster.submit(lambda s: s.upper(), "plain function").result(60) == "PLAIN FUNCTION"


def test_futures_nested_in_arguments_are_dependencies(cluster: Cluster) -> None:
    a, b, c = square.submit(2), square.submit(3), add.submit(1, 1)
    summed = total.submit([a, {"k": (b, 10)}, (c,)])
    assert summed.result(60) == 4 + 9 + 10 + 2
    dependencies = set(owner_task(cluster, summed).data_dependencies)
    assert {a.result_id, b.result_id, c.result_id} <= dependencies


def test_put_is_uploaded_once_and_shared(cluster: Cluster) -> None:
    big = list(range(200_000))
    shared = cluster.put(big)
    assert shared.done() and shared.result() is big
    futures = total.map([shared] * 4)
    assert [f.result(60) for f in futures] == [sum(big)] * 4
    for future in futures:
        task_info = owner_task(cluster, future)
        assert shared.result_id in task_info.data_dependencies
        size = cluster._results.get_result(task_info.payload_id).size
        assert size < 4096, "the shared value must not be copied into each payload"


def test_map_wait_and_as_completed(cluster: Cluster) -> None:
    futures = square.map(range(30), batch_size=7, progress=True)
    done, not_done = wait(futures, timeout=120, progress=True)
    assert len(done) == 30 and not not_done
    assert sorted(f.result() for f in as_completed(futures)) == [x * x for x in range(30)]
    assert [f.result() for f in add.map([1, 2], [10, 20])] == [11, 22]
    first = wait([square.submit(5)], return_when=FIRST_COMPLETED, timeout=60).done
    assert [f.result() for f in first] == [25]


@task
def fails(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x


def test_value_error_is_raised_again_with_the_remote_traceback(cluster: Cluster) -> None:
    future = fails.submit(-3)
    with pytest.raises(ValueError, match="negative input -3") as raised:
        future.result(60)
    cause = raised.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in fails" in cause.text and "ValueError: negative input -3" in cause.text
    shown = "".join(traceback.format_exception(raised.value))
    assert "in fails" in shown  # the remote frames show with the local ones
    assert isinstance(future.exception(), ValueError)
    assert owner_task(cluster, future).status == TaskStatus.ERROR


@task
def raises_oops() -> None:
    raise Oops("custom", 42)


@task
def raises_local_type() -> None:
    class Unknown(Exception):
        pass

    raise Unknown("a type the client does not have")


def test_exception_types_and_fallback(cluster: Cluster) -> None:
    with pytest.raises(Oops) as raised:
        raises_oops.submit().result(60)
    assert raised.value.args == ("custom", 42)
    with pytest.raises(TaskError, match="a type the client does not have"):
        raises_local_type.submit().result(60)


def test_error_through_delegation_and_dependencies(cluster: Cluster) -> None:
    """The failure of a subtask reaches the client through the tasks that depended on it."""
    with pytest.raises(ValueError, match="negative input -1"):
        add.submit(fails.submit(-1), 1).result(60)


def test_a_task_taking_an_already_failed_future_fails_with_its_error(cluster: Cluster) -> None:
    """ArmoniK refuses a task whose input is aborted: the SDK's future fails with the error of
    the task that failed, as if the new task had run (Dask and Ray do the same)."""
    failed = fails.submit(-1)
    assert isinstance(failed.exception(60), ValueError)  # its output is ABORTED by now
    doomed, fine = add.map([failed, 2], [1, 3])  # one batch: one call refused, one fine
    with pytest.raises(ValueError, match="negative input -1"):
        doomed.result(60)
    assert doomed.failed
    assert fine.result(60) == 5


@task
def crash_once(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)  # the worker dies: ArmoniK retries the task
    return "survived"


def test_worker_crash_is_retried(cluster: Cluster, tmp_path: Path) -> None:
    future = crash_once.submit(str(tmp_path / "crashed"))
    assert future.result(120) == "survived"
    assert (tmp_path / "crashed").exists()
    assert owner_task(cluster, future).retry_of_ids  # the attempt that completed is a retry


@task
def sleeper(seconds: float) -> str:
    time.sleep(seconds)
    return "woke up"


def test_timeout_and_cancel(cluster: Cluster) -> None:
    future = sleeper.submit(60)
    with pytest.raises(TimeoutError):
        future.result(timeout=0.2)
    task_id = owner_task(cluster, future).id
    assert future.cancel()
    assert future.cancelled() and not future.cancel()
    with pytest.raises(CancelledError):
        future.result()
    deadline = time.monotonic() + 30
    while cluster._tasks.get_task(task_id).status != TaskStatus.CANCELLED:
        assert time.monotonic() < deadline, "the task was not cancelled"
        time.sleep(0.2)


@task
def waits_inside() -> int:
    return square.submit(3).result()


def test_waiting_inside_a_task_is_a_clear_error(cluster: Cluster) -> None:
    with pytest.raises(WaitInsideTaskError, match="cannot wait"):
        waits_inside.submit().result(60)
    with pytest.raises(RuntimeError, match="only works inside a task"):
        add.delegate(1, 2)


@task
def fan_out(n: int) -> list[Any]:
    return [square.submit(i) for i in range(n)]  # a structure of futures: gathered


@task
def returns_future(x: int) -> Future[float]:
    return square.submit(x)


@task
def delegates_and_reuses(x: int) -> Future[int]:
    doubled = add.submit(x, x)
    return add.delegate(doubled, square.submit(doubled))  # a future used twice


def test_delegation_forms(cluster: Cluster) -> None:
    assert fan_out.submit(4).result(60) == [0, 1, 4, 9]
    assert returns_future.submit(6).result(60) == 36
    assert delegates_and_reuses.submit(3).result(60) == 6 + 36


def test_example_script_on_a_running_cluster(cluster: Cluster) -> None:
    """An example run as a script: its tasks travel by value from its __main__."""
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "fibonacci.py"), "7", "--endpoint", cluster.endpoint],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.startswith("fib(7) = 13: 61 tasks in ")


def test_fib_15_by_delegation(cluster: Cluster) -> None:
    """About 3,000 tasks, no worker ever waits."""
    before = sum(cluster.session.counts().values())
    assert fib.submit(15).result(timeout=600) == 610
    counts = cluster.session.counts()
    assert sum(counts.values()) - before == 2959
    assert set(counts) <= {"completed", "error", "cancelled", "retried"}


@task(priority=3, max_retries=5, max_duration=90, options={"team": "sdk"})
def with_options() -> str:
    return "ok"


def test_task_options_and_session_counts(cluster: Cluster) -> None:
    future = with_options.submit()
    assert future.result(60) == "ok"
    options = owner_task(cluster, future).options
    assert (options.priority, options.max_retries) == (3, 5)
    assert options.max_duration.total_seconds() == 90
    assert options.options["team"] == "sdk"
    faster = with_options.options(priority=7).submit()
    faster.result(60)
    assert owner_task(cluster, faster).options.priority == 7
    counts = cluster.session.counts()
    assert counts["completed"] > 0 and all(isinstance(n, int) for n in counts.values())
    assert isinstance(pyarmonik.Cluster, type)


# -- the function worker driven by the official `armonik` client alone ------------------------
# (the payload built by hand as docs/sdk.md describes: no pyarmonik on the client side)


def raw_payload(function: Any, args: tuple[Any, ...], refs: dict[int, str], python: str) -> bytes:
    import io
    import json
    import pickle

    import cloudpickle

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        def persistent_id(self, obj: Any) -> tuple[str, str] | None:
            return ("pyarmonik.result", refs[id(obj)]) if id(obj) in refs else None

    header = {
        "format": "pyarmonik-task/1",
        "python": python,
        "cloudpickle": cloudpickle.__version__,
    }
    body = io.BytesIO()
    Pickler(body, protocol=pickle.HIGHEST_PROTOCOL).dump((function, args, {}))
    return json.dumps(header).encode() + b"\n" + body.getvalue()


def test_official_client_alone(cluster: Cluster) -> None:
    import pickle
    import platform
    from datetime import timedelta

    import cloudpickle
    import grpc
    from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
    from armonik.common import TaskDefinition, TaskOptions

    with grpc.insecure_channel(cluster.endpoint) as channel:
        options = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=2)
        session = ArmoniKSessions(channel).create_session(options)
        results, tasks = ArmoniKResults(channel), ArmoniKTasks(channel)
        # A value uploaded as a result of its own, referred to from the payload's pickle.
        shared = results.create_results({"shared": cloudpickle.dumps([1, 2, 3])}, session)
        shared_id = shared["shared"].result_id
        marker = object()  # stands for the shared value in the arguments
        good = raw_payload(
            lambda xs, k: [x * k for x in xs],
            (marker, 10),
            {id(marker): shared_id},
            platform.python_version(),
        )
        bad = raw_payload(lambda: "never runs", (), {}, "2.7.18")
        payloads = results.create_results({"good": good, "bad": bad}, session, batch_size=2)
        outputs = results.create_results_metadata(["good-out", "bad-out"], session)
        submitted = tasks.submit_tasks(
            session,
            [
                TaskDefinition(
                    payload_id=payloads["good"].result_id,
                    expected_output_ids=[outputs["good-out"].result_id],
                    data_dependencies=[shared_id],
                ),
                TaskDefinition(
                    payload_id=payloads["bad"].result_id,
                    expected_output_ids=[outputs["bad-out"].result_id],
                ),
            ],
        )
        good_id = outputs["good-out"].result_id
        ArmoniKEvents(channel).wait_for_result_availability([good_id], session)
        assert pickle.loads(results.download_result_data(good_id, session)) == [10, 20, 30]
        # A mismatched Python version is a task error with a readable message, not a crash.
        deadline = time.monotonic() + 60
        while (bad_task := tasks.get_task(submitted[1].id)).status != TaskStatus.ERROR:
            assert time.monotonic() < deadline, bad_task.status
            time.sleep(0.2)
        assert not bad_task.retry_of_ids
        assert "Python 2.7.18 on the client" in bad_task.output.error
        assert "same Python and cloudpickle versions" in bad_task.output.error


def test_armoniks_calls_alone_against_a_server_without_the_sdk_service(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against another ArmoniK server (UNIMPLEMENTED), the SDK submits with CreateResults,
    CreateResultsMetaData and SubmitTasks, and follows Events and downloads."""
    monkeypatch.setattr(sdk_service, "SUBMIT", "/pyarmonik.v1.Missing/Submit")
    monkeypatch.setattr(sdk_service, "WATCH", "/pyarmonik.v1.Missing/Watch")
    with Cluster.connect(cluster.endpoint, max_duration=120) as plain:
        assert plain.submit(square, 7).result(60) == 49
        assert plain._submit_call is None and not plain._watcher._use_values
        assert [f.result(60) for f in add.map([1, 2], [10, 20])] == [11, 22]
        with pytest.raises(ValueError, match="negative input -2"):
            plain.submit(fails, -2).result(60)
