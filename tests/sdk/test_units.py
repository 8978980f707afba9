"""The function worker's payload format and error protocol, without a cluster."""

from __future__ import annotations

import json
import pickle
import sys
from datetime import timedelta
from typing import Any

import cloudpickle
import pytest

from pyarmonik import Future, task
from pyarmonik.sdk import PayloadError, RemoteTraceback, TaskError, payload


class Marker:
    def __init__(self, result_id: str):
        self.result_id = result_id


def ref_of(obj: Any) -> str | None:
    return obj.result_id if isinstance(obj, Marker) else None


def test_payload_round_trip_with_nested_references() -> None:
    args = ([Marker("a"), {"k": (Marker("b"), 3)}], Marker("a"))
    data, refs = payload.encode_task(len, args, {"x": Marker("c")}, ref_of)
    assert refs == ["a", "b", "c"]
    first_line = json.loads(data.split(b"\n", 1)[0])
    assert first_line["format"] == "pyarmonik-task/1"
    assert first_line["python"] == ".".join(map(str, sys.version_info[:3]))
    assert first_line["cloudpickle"] == cloudpickle.__version__
    assert first_line["function"] == "builtins.len"
    header, (function, loaded, kwargs) = payload.decode_task(data, lambda rid: f"<{rid}>")
    assert function is len and header["function"] == "builtins.len"
    assert loaded == (["<a>", {"k": ("<b>", 3)}], "<a>") and kwargs == {"x": "<c>"}


def with_header(**fields: str) -> bytes:
    header = {"format": "pyarmonik-task/1", "python": payload.PYTHON}
    header |= {"cloudpickle": payload.CLOUDPICKLE, **fields}
    return json.dumps(header).encode() + b"\n" + cloudpickle.dumps((len, ([],), {}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello", "not a pyarmonik task"),
        (with_header(format="pyarmonik-task/9"), "pyarmonik-task/9 is not pyarmonik-task/1"),
        (with_header(python="3.6.1"), "Python 3.6.1 on the client"),
        (with_header(cloudpickle="0.5.0"), "cloudpickle 0.5.0 on the client"),
    ],
)
def test_bad_payloads_are_payload_errors(data: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        payload.decode_task(data, lambda rid: None)


def test_a_function_the_worker_cannot_import() -> None:
    body = pickle.dumps((pickle.loads, (), {}), protocol=0).replace(
        b"cpickle\n", b"cnomodule_xyz\n"
    )
    header = json.dumps({"format": "pyarmonik-task/1", "python": payload.PYTHON,
                         "cloudpickle": payload.CLOUDPICKLE}).encode()  # fmt: skip
    with pytest.raises(PayloadError, match="must be importable on the workers"):
        payload.decode_task(header + b"\n" + body, lambda rid: None)


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


def test_errors_are_rebuilt_with_their_type_and_traceback() -> None:
    details = payload.format_error(raised(KeyError("missing")))
    assert details.splitlines()[-1].startswith(payload.ERROR_MARKER)
    error = payload.rebuild_error(details, "fallback")
    assert isinstance(error, KeyError) and error.args == ("missing",)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "KeyError: 'missing'" in error.__cause__.text
    # as propagated by the tasks that depended on the failed one
    propagated = f"Dependency aborted: r1\nTask t1 failed:\n{details}"
    assert isinstance(payload.rebuild_error(propagated, "fallback"), KeyError)


def test_errors_that_are_not_rebuilt() -> None:
    class Local(Exception):
        pass

    unknown = payload.rebuild_error(payload.format_error(raised(Local("x"))), "fallback")
    assert isinstance(unknown, TaskError) and "Local: x" in str(unknown)
    exiting = payload.rebuild_error(payload.format_error(raised(SystemExit(3))), "fallback")
    assert isinstance(exiting, TaskError)  # never ends the client
    plain = payload.rebuild_error("worker returned error UNAVAILABLE", "task t ended ERROR")
    assert isinstance(plain, TaskError) and str(plain) == "task t ended ERROR"
    assert isinstance(plain.__cause__, RemoteTraceback)


def test_task_decorator_options() -> None:
    @task(max_duration=30, options={"a": "b"})
    def f(x: int) -> int:
        return x + 1

    assert f(1) == 2 and f.__name__ == "f"
    assert f.task_options.max_duration == timedelta(seconds=30)
    assert f.options(priority=4).task_options.priority == 4
    with pytest.raises(TypeError, match="unknown task options: colour"):
        f.options(colour="red")
    with pytest.raises(RuntimeError, match="no cluster to submit to"):
        f.submit(1)


def test_futures_do_not_pickle_outside_tasks() -> None:
    with pytest.raises(TypeError, match="travels only as an argument"):
        pickle.dumps(Future(None, "f", "r1"))  # type: ignore[arg-type]


class Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("endpoint", "tls", "uri"),
    [
        ("127.0.0.1:5001", {}, "http://127.0.0.1:5001"),
        ("localhost:5001", {"certificate_authority": b"CA"}, "https://localhost:5001"),
        ("host:443", {"client_certificate": "c.pem", "client_key": "k.pem"}, "https://host:443"),
        ("https://host:443", {}, "https://host:443"),
    ],
)
def test_connect_channels(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, tls: dict[str, Any], uri: str
) -> None:
    from pyarmonik.sdk import cluster

    seen: dict[str, Any] = {}

    def create_channel(target: str, **options: Any) -> Any:
        seen.update(options, target=target)
        raise Stop

    monkeypatch.setattr(cluster, "create_channel", create_channel)
    with pytest.raises(Stop):
        cluster.Cluster.connect(endpoint, **tls)
    assert seen["target"] == uri
    assert all(seen[key] == value for key, value in tls.items())
