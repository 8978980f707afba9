"""`Cluster`: a session on an ArmoniK cluster (a running one, or a local one started for
the duration of a `with` block), the futures of its tasks, and their events."""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import operator
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from os import PathLike
from pathlib import Path
from types import FunctionType, TracebackType
from typing import Any, TypeVar

import grpc
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import (
    EventTypes,
    Result,
    ResultStatus,
    Task,
    TaskDefinition,
    TaskOptions,
    create_channel,
)

from pyarmonik.compute.orphans import dying_with_parent
from pyarmonik.control import sdk_service
from pyarmonik.sdk import payload
from pyarmonik.sdk.context import (
    Args,
    Kwargs,
    armonik_options,
    register_cluster,
    unregister_cluster,
)
from pyarmonik.sdk.errors import TaskError
from pyarmonik.sdk.futures import COMPLETED, FAILED, Future, progress_bar
from pyarmonik.sdk.task import Options, TaskFunction

T = TypeVar("T")
log = logging.getLogger(__name__)

# Above this size a payload or value is streamed (UploadResultData), not sent inline.
INLINE_LIMIT = 1024 * 1024
Certificate = str | PathLike[str] | bytes | None


class Session:
    """The ArmoniK session of a Cluster."""

    def __init__(self, cluster: Cluster, session_id: str):
        self._cluster = cluster
        self.id = session_id

    def __repr__(self) -> str:
        return f"<Session {self.id}>"

    def counts(self) -> dict[str, int]:
        """Number of tasks by status (lower-case ArmoniK status names), CountTasksByStatus."""
        counts = self._cluster._tasks.count_tasks_by_status(Task.session_id == self.id)
        return {status.name.lower(): n for status, n in sorted(counts.items()) if n}

    def cancel(self) -> None:
        """Cancel the session: its unfinished tasks are cancelled."""
        self._cluster._sessions.cancel_session(self.id)


class _Watcher:
    """One stream per cluster, on the outputs of the futures this client submitted, that
    finishes the futures as their results complete or abort: pyarmonik's Watch stream
    (small values come with it: no download), else ArmoniK's Events."""

    def __init__(self, channel: grpc.Channel, session_id: str, prefix: str):
        self._events = ArmoniKEvents(channel)
        self._values = channel.unary_stream(sdk_service.WATCH)
        self._use_values = True
        self._call: Any = None
        self._session_id = session_id
        self._prefix = prefix
        self._filter = Result.name.startswith(prefix)
        self._pending: dict[str, list[Future[Any]]] = {}
        # Futures of a `Submit` under way, by output name (their ids come with its reply,
        # which their completion may overtake).
        self._named: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pyarmonik-events", daemon=True)
        self._thread.start()

    def watch(self, futures: Iterable[Future[Any]]) -> None:
        with self._lock:
            for future in futures:
                self._pending.setdefault(future.result_id, []).append(future)

    def watch_named(self, futures: dict[str, Future[Any]]) -> None:
        with self._lock:
            self._named.update(futures)

    def named_to_ids(self, ids: dict[str, str]) -> None:
        """The `Submit` replied: its futures (output name → id) are watched by id."""
        with self._lock:
            for name, result_id in ids.items():
                future = self._named.pop(name, None)
                if future is not None and not future.done():
                    future._result_id = result_id
                    self._pending.setdefault(result_id, []).append(future)

    def unwatch_named(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self._named.pop(name, None)

    def unwatch(self, futures: Iterable[Future[Any]]) -> None:
        with self._lock:
            for future in futures:
                waiting = self._pending.get(future.result_id, [])
                if future in waiting:
                    waiting.remove(future)
                if not waiting:
                    self._pending.pop(future.result_id, None)

    def _run(self) -> None:
        kinds = [EventTypes.NEW_RESULT, EventTypes.RESULT_STATUS_UPDATE]
        while not self._stopping.is_set():
            try:
                # Both streams start with a snapshot of the current statuses, so reconnecting
                # after an error loses nothing.
                if self._use_values:
                    self._watch_values()
                else:
                    self._events.get_events(
                        self._session_id, kinds, [self._handle], result_filter=self._filter
                    )
            except grpc.RpcError as error:
                if self._stopping.is_set():
                    return
                code = error.code()  # type: ignore[attr-defined]
                if self._use_values and code in (
                    grpc.StatusCode.UNIMPLEMENTED,  # not a pyarmonik server
                    grpc.StatusCode.PERMISSION_DENIED,  # Events may still be allowed
                ):
                    self._use_values = False
                    continue
                log.debug("events stream interrupted (%s), reconnecting", error)
            except Exception:
                log.exception("events stream failed, reconnecting")
            self._stopping.wait(0.5)

    def _watch_values(self) -> None:
        request = sdk_service.encode({"session_id": self._session_id, "name_prefix": self._prefix})
        self._call = self._values(request)
        if self._stopping.is_set():
            self._call.cancel()
        for message in self._call:
            for result_id, status, data, name in sdk_service.decode(message)["results"]:
                self._ended(result_id, status, data, name)

    def _handle(self, session_id: str, kind: EventTypes, event: Any) -> bool:
        self._ended(event.result_id, event.status, None)
        return self._stopping.is_set()

    def _ended(self, result_id: str, status: int, data: bytes | None, name: str = "") -> None:
        if status == ResultStatus.COMPLETED or status == ResultStatus.ABORTED:
            with self._lock:
                futures = self._pending.pop(result_id, [])
                named = self._named.pop(name, None) if name else None
                if named is not None:
                    named._result_id = result_id
                    futures.append(named)
            state = COMPLETED if status == ResultStatus.COMPLETED else FAILED
            for future in futures:
                future._data = data
                future._finish(state)

    def stop(self) -> None:
        self._stopping.set()
        if self._call is not None:
            self._call.cancel()


class _LocalProcess:
    """`pyarmonik local` in a subprocess, on a free port, with the function worker."""

    def __init__(self, agents: int | None, data_dir: Path | None, timeout: float):
        self.owned_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="pyarmonik-local-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "cluster.log"
        # Workers import what the client imports (functions of importable modules travel
        # by reference): they get the client's module search path.
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        command = [sys.executable, "-m", "pyarmonik.cli.main", "local", "--port", "0",
                   "--data-dir", str(self.data_dir)] + (["--agents", str(agents)] if agents else [])  # fmt: skip
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                dying_with_parent(command),
                stdout=subprocess.PIPE,
                stderr=log_file,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))},
                start_new_session=True,
            )
        self.endpoint = self._read_endpoint(timeout)

    def _read_endpoint(self, timeout: float) -> str:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if selector.select(timeout):
                line = self.process.stdout.readline().decode().strip()
                if line:
                    return line
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise RuntimeError(f"the local cluster did not start; its log ends with:\n{tail}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self.owned_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class Cluster:
    """A session on an ArmoniK cluster, where `task.submit(...)` sends tasks.

    Use `Cluster.connect(endpoint)` or `Cluster.local()`, preferably in a `with` block: the
    latest cluster opened is the one tasks go to. Leaving the block closes the session
    (cancels it if the block raised); results stay readable until the session is purged.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        partitions: list[str] | None = None,
        max_duration: timedelta | float = timedelta(hours=1),
        max_retries: int = 3,
        priority: int = 1,
        options: Mapping[str, str] | None = None,
        endpoint: str = "",
        local: _LocalProcess | None = None,
    ):
        self.endpoint = endpoint
        self._channel = channel
        self._local = local
        self._sessions = ArmoniKSessions(channel)
        self._results = ArmoniKResults(channel)
        self._tasks = ArmoniKTasks(channel)
        if not isinstance(max_duration, timedelta):
            max_duration = timedelta(seconds=max_duration)
        self.defaults = TaskOptions(
            max_duration=max_duration,
            priority=priority,
            max_retries=max_retries,
            partition_id=partitions[0] if partitions else "",
            options=dict(options or {}),
        )
        session_id = self._sessions.create_session(self.defaults, partition_ids=partitions)
        self.session = Session(self, session_id)
        self._prefix = f"{uuid.uuid4().hex[:8]}:"  # names this client's outputs
        self._counter = itertools.count()
        self._functions: dict[int, tuple[Any, bytes, str | None]] = {}
        self._lock = threading.Lock()
        # pyarmonik's one-call submission (control/sdk_service.py), until the server says
        # it has none.
        self._submit_call: Any = channel.unary_unary(sdk_service.SUBMIT)
        self._closed = False
        self._watcher = _Watcher(channel, session_id, self._prefix)
        register_cluster(self)

    # -- opening and closing -------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        endpoint: str,
        *,
        certificate_authority: Certificate = None,
        client_certificate: Certificate = None,
        client_key: Certificate = None,
        **session: Any,
    ) -> Cluster:
        """A new session on the cluster at `endpoint` ("host:port", "http://host:port", or
        "https://..." for TLS, with mutual TLS when a client certificate is given).

        Session options: partitions (the first is the default), max_duration, max_retries,
        priority, options (the ArmoniK options map).
        """
        secure = any(x is not None for x in (certificate_authority, client_certificate))
        uri = endpoint if "://" in endpoint else f"{'https' if secure else 'http'}://{endpoint}"
        channel = create_channel(
            uri,
            certificate_authority=certificate_authority,
            client_certificate=client_certificate,
            client_key=client_key,
        )
        try:
            return cls(channel, endpoint=endpoint, **session)
        except BaseException:
            channel.close()
            raise

    @classmethod
    def local(
        cls,
        agents: int | None = None,
        *,
        data_dir: str | Path | None = None,
        startup_timeout: float = 60.0,
        **session: Any,
    ) -> Cluster:
        """Start `pyarmonik local` (control plane and `agents` agent/worker pairs with the
        function worker, default one per core) and connect to it; closing the cluster
        stops it. Its log is `cluster.log` in its data folder (a temporary one by default)."""
        process = _LocalProcess(agents, Path(data_dir) if data_dir else None, startup_timeout)
        channel = grpc.insecure_channel(process.endpoint)
        try:
            cluster = cls(channel, endpoint=process.endpoint, local=process, **session)
        except BaseException:
            channel.close()
            process.stop()
            raise
        atexit.register(cluster.close)  # a cluster left open still stops cleanly
        return cluster

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(cancel=kind is not None)

    @contextlib.contextmanager
    def as_current(self) -> Iterator[Cluster]:
        """Within the block, `task.submit(...)` goes to this cluster (the latest opened is
        the current one otherwise)."""
        register_cluster(self)
        try:
            yield self
        finally:
            unregister_cluster(self, every=False)

    def close(self, cancel: bool = False) -> None:
        """Close the session (cancel it when `cancel`), stop watching, and stop the local
        cluster if this one started it."""
        if self._closed:
            return
        self._closed = True
        unregister_cluster(self)
        self._watcher.stop()
        try:
            if cancel:
                self._sessions.cancel_session(self.session.id)
            else:
                self._sessions.close_session(self.session.id)
        except grpc.RpcError as error:
            log.warning("could not end session %s: %s", self.session.id, error)
        finally:
            self._channel.close()
            if self._local is not None:
                atexit.unregister(self.close)
                self._local.stop()

    def __repr__(self) -> str:
        return f"<Cluster {self.endpoint} session={self.session.id}>"

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Cluster does not travel to tasks (a task function refers to one?): inside a "
            "task, `f.submit(...)` submits through the task's own agent"
        )

    # -- submitting ----------------------------------------------------------------------------

    def submit(self, function: Any, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run `function` (a @task, or any function with the session's options) as a task."""
        return self._submit(_as_task(function), [(args, kwargs)])[0]

    def map(
        self,
        function: Any,
        *iterables: Iterable[Any],
        batch_size: int = 1000,
        progress: bool | None = None,
    ) -> list[Future[Any]]:
        """`function.map(...)` for any function."""
        return self.map_tasks(
            _as_task(function), zip(*iterables, strict=False), batch_size, progress
        )

    def put(self, value: T) -> Future[T]:
        """Upload `value` once; pass the returned (completed) future to many tasks, which
        then share the value by reference."""
        data = payload.dumps_value(value)
        name = f"put#{next(self._counter)}"
        result_id = self._create_data({name: data})[name]
        future: Future[T] = Future(self, "put", result_id)
        future._finish(COMPLETED, value)
        return future

    # -- the Submitter protocol (TaskFunction.submit and map come here) ------------------------

    def map_tasks(
        self,
        task: TaskFunction[..., Any],
        arguments: Iterable[Args],
        batch_size: int,
        progress: bool | None,
    ) -> list[Future[Any]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        items = list(arguments)
        futures: list[Future[Any]] = []
        with progress_bar(len(items), f"submitting {task.name}", progress) as advance:
            for start in range(0, len(items), batch_size):
                batch = items[start : start + batch_size]
                futures += self._submit(task, [(args, {}) for args in batch])
                advance(len(batch))
        return futures

    def submit_task(self, task: TaskFunction[..., Any], args: Args, kwargs: Kwargs) -> Future[Any]:
        return self._submit(task, [(args, kwargs)])[0]

    def _submit(
        self, task: TaskFunction[..., Any], calls: list[tuple[Args, Kwargs]]
    ) -> list[Future[Any]]:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        session_id = self.session.id
        function = self._function_part(task.function, len(calls))
        names = [f"{self._prefix}{task.name}#{next(self._counter)}" for _ in calls]
        payloads, dependencies = {}, []
        for index, (args, kwargs) in enumerate(calls):
            data, refs = payload.encode_task(function, args, kwargs, self._ref_of)
            payloads[f"payload:{names[index]}"] = data
            dependencies.append(refs)
        options = armonik_options(task.task_options, self.defaults.priority)
        if self._submit_call is not None and all(
            len(data) <= sdk_service.VALUE_INLINE for data in payloads.values()
        ):
            futures = self._submit_in_one_call(task, names, payloads, dependencies, options)
            if futures is not None:
                return futures
        outputs = self._results.create_results_metadata(names, session_id, batch_size=len(names))
        futures = [Future(self, task.name, outputs[n].result_id) for n in names]
        self._watcher.watch(futures)
        try:
            payload_ids = self._create_data(payloads)
            definitions = [
                TaskDefinition(
                    payload_id=payload_ids[f"payload:{name}"],
                    expected_output_ids=[future.result_id],
                    data_dependencies=refs,
                    options=options,
                )
                for name, future, refs in zip(names, futures, dependencies, strict=True)
            ]
            try:
                self._tasks.submit_tasks(session_id, definitions, chunk_size=1000)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                    raise
                self._submit_around_failures(definitions, futures, error)
        except BaseException:
            self._watcher.unwatch(futures)
            raise
        return futures

    def _submit_in_one_call(
        self,
        task: TaskFunction[..., Any],
        names: list[str],
        payloads: dict[str, bytes],
        dependencies: list[list[str]],
        options: TaskOptions | None,
    ) -> list[Future[Any]] | None:
        """Submit through pyarmonik's `Submit`; None when it cannot be used for this batch
        (not a pyarmonik server, or an argument's task failed: ArmoniK's calls handle it)."""
        raw_options = options.to_message().SerializeToString() if options else None
        request = {
            "session_id": self.session.id,
            "tasks": [
                {
                    "payload_name": payload_name,
                    "payload": data,
                    "output_name": name,
                    "dependencies": refs,
                    "options": raw_options,
                }
                for name, (payload_name, data), refs in zip(
                    names, payloads.items(), dependencies, strict=True
                )
            ],
        }
        futures: list[Future[Any]] = [Future(self, task.name) for _ in names]
        self._watcher.watch_named(dict(zip(names, futures, strict=True)))
        try:
            reply = sdk_service.decode(self._submit_call(sdk_service.encode(request)))
        except BaseException as error:
            self._watcher.unwatch_named(names)
            if isinstance(error, grpc.RpcError):
                code = error.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    self._submit_call = None  # not a pyarmonik server
                    return None
                if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                    return None  # ArmoniK's calls say what is wrong, or work around it
            raise
        ids = [created["output_id"] for created in reply["tasks"]]
        self._watcher.named_to_ids(dict(zip(names, ids, strict=True)))
        for future, result_id in zip(futures, ids, strict=True):
            future._result_id = result_id
        return futures

    def _submit_around_failures(
        self, definitions: list[TaskDefinition], futures: list[Future[Any]], error: Exception
    ) -> None:
        """ArmoniK refused the batch because an argument's task failed meanwhile (its output is
        aborted): the futures of the calls taking it fail with that task's error, as if they
        had run, and the other calls are submitted."""
        needed = sorted({d for definition in definitions for d in definition.data_dependencies})
        session_id = self.session.id
        gone = (Result.status == ResultStatus.ABORTED) | (Result.status == ResultStatus.DELETED)
        unusable: set[str] = set()
        for start in range(0, len(needed), 100):  # a filter of 100 ids per call
            ids = needed[start : start + 100]
            matching = functools.reduce(operator.or_, (Result.result_id == i for i in ids))
            _, listed = self._results.list_results(matching & gone, page_size=len(ids))
            unusable.update(result.result_id for result in listed)
        if not unusable:
            raise error
        healthy = []
        for definition, future in zip(definitions, futures, strict=True):
            failed = [d for d in definition.data_dependencies if d in unusable]
            if failed:
                self._watcher.unwatch([future])
                future._fail(self._failure(failed[0], "an argument"))
            else:
                healthy.append(definition)
        if healthy:
            self._tasks.submit_tasks(session_id, healthy, chunk_size=1000)

    def _create_data(self, blobs: dict[str, bytes]) -> dict[str, str]:
        """Results holding `blobs` (by name): big ones streamed, small ones inline, in few
        calls."""
        session_id, ids = self.session.id, {}
        inline = {name: data for name, data in blobs.items() if len(data) <= INLINE_LIMIT}
        for name in blobs.keys() - inline.keys():
            result = self._results.create_results_metadata([name], session_id)[name]
            self._results.upload_result_data(result.result_id, session_id, blobs[name])
            ids[name] = result.result_id
        for batch in payload.batches(inline):
            created = self._results.create_results(batch, session_id, batch_size=len(batch))
            ids.update({name: result.result_id for name, result in created.items()})
        return ids

    def _function_part(self, function: Any, calls: int) -> Any:
        """How `function` travels to `calls` tasks: pickled once per session and embedded in
        each payload, or uploaded once as a result (by reference) when its copies would
        weigh more (see payload.worth_sharing)."""
        if not isinstance(function, FunctionType):
            return function
        with self._lock:
            known = self._functions.get(id(function))
            if known is None or known[0] is not function:
                known = (function, payload.dumps_value(function), None)
                self._functions[id(function)] = known  # keeps it alive: ids stay unique
            _, data, result_id = known
            if result_id is None and payload.worth_sharing(len(data), calls):
                name = f"function:{payload.qualified_name(function)}#{next(self._counter)}"
                result_id = self._create_data({name: data})[name]
                self._functions[id(function)] = (function, data, result_id)
        return function if result_id else payload.Pickled(data, payload.qualified_name(function))

    def _ref_of(self, obj: Any) -> str | None:
        if isinstance(obj, Future):
            if obj._owner is not self:
                raise ValueError(f"{obj!r} belongs to another cluster or task")
            return obj.result_id
        if isinstance(obj, FunctionType):
            known = self._functions.get(id(obj))
            if known is not None and known[0] is obj:
                return known[2]
        return None

    # -- Owner of its futures ------------------------------------------------------------------

    def check_wait(self) -> None:
        return None

    def assign_id(self, future: Future[Any]) -> str:
        raise AssertionError("a client future always has a result id")

    def resolve(self, future: Future[Any]) -> Any:
        if future.failed:
            raise self._failure(future.result_id, future.name)
        data, future._data = future._data, None
        if data is None:  # not sent with its completion (large, or not a pyarmonik server)
            data = self._results.download_result_data(future.result_id, self.session.id)
        try:
            return payload.loads_value(data)
        except Exception as error:
            raise TaskError(
                f"cannot unpickle the result of {future.name} ({type(error).__name__}: {error}):"
                " are the client and the workers on the same Python and library versions?"
            ) from error

    def _failure(self, result_id: str, name: str) -> BaseException:
        """The exception of the task that should have produced the result (following its
        current owner, so delegation and retries are accounted for)."""
        owners = self._results.get_owner_task_id([result_id], self.session.id)
        owner = owners.get(result_id, "")
        details, status = "", "ended"
        if owner:
            task = self._tasks.get_task(owner)
            details = (task.output.error if task.output else "") or ""
            status = f"ended {task.status.name}" if task.status is not None else status
        summary = details.strip().splitlines()[0] if details.strip() else "no details"
        return payload.rebuild_error(details, f"task {owner} ({name}) {status}: {summary}")

    def cancel(self, future: Future[Any]) -> bool:
        owners = self._results.get_owner_task_id([future.result_id], self.session.id)
        owner = owners.get(future.result_id)
        if owner:
            self._tasks.cancel_tasks([owner])
        self._watcher.unwatch([future])
        return True


def _as_task(function: Any) -> TaskFunction[..., Any]:
    if isinstance(function, TaskFunction):
        return function
    if callable(function):
        return TaskFunction(function, Options())
    raise TypeError(f"{function!r} is not callable")
