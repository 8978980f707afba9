"""Where `submit` goes: the task running in this worker (through the Agent API), else the
client's current Cluster; and the task side of it, which submits subtasks and delegates."""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import timedelta
from types import FunctionType
from typing import TYPE_CHECKING, Any, Protocol

from armonik.common import TaskDefinition, TaskOptions

from pyarmonik.sdk import payload
from pyarmonik.sdk.errors import WaitInsideTaskError
from pyarmonik.sdk.futures import Future
from pyarmonik.sdk.task import Options, TaskFunction

if TYPE_CHECKING:
    from armonik.worker import TaskHandler

Args = tuple[Any, ...]
Kwargs = dict[str, Any]


class Submitter(Protocol):
    def submit_task(
        self, task: TaskFunction[..., Any], args: Args, kwargs: Kwargs
    ) -> Future[Any]: ...

    def map_tasks(
        self,
        task: TaskFunction[..., Any],
        arguments: Iterable[Args],
        batch_size: int,
        progress: bool | None,
    ) -> list[Future[Any]]: ...


_task: ContextVar[TaskContext | None] = ContextVar("pyarmonik_task", default=None)
_clusters: list[Submitter] = []  # stack: the latest connected cluster is the current one


def current_task() -> TaskContext | None:
    """The task this worker is running (None on a client)."""
    return _task.get()


def register_cluster(cluster: Submitter) -> None:
    _clusters.append(cluster)


def unregister_cluster(cluster: Submitter, every: bool = True) -> None:
    """Remove the latest entry of `cluster` from the stack (every entry when `every`)."""
    for index in range(len(_clusters) - 1, -1, -1):
        if _clusters[index] is cluster:
            del _clusters[index]
            if not every:
                return


def submitter() -> Submitter:
    task = _task.get()
    if task is not None:
        return task
    if _clusters:
        return _clusters[-1]
    raise RuntimeError(
        "no cluster to submit to: use `with Cluster.connect(endpoint):` or `with Cluster.local():`"
    )


def armonik_options(options: Options, priority: int) -> TaskOptions | None:
    """Task-level options, None when the session defaults apply. Zero and empty fields fall
    back on the session's defaults on the server; the priority is always taken from the
    task level in ArmoniK, so it is filled."""
    if options.is_default():
        return None
    return TaskOptions(
        max_duration=options.max_duration or timedelta(0),
        priority=options.priority or priority,
        max_retries=options.max_retries or 0,
        partition_id=options.partition or "",
        options=dict(options.options),
    )


class FunctionCache:
    """The functions this worker loaded, embedded in payloads or from results (by session),
    kept alive so that the tasks of a function unpickle it once, and so that subtasks embed
    it again as is, or refer to the same result."""

    def __init__(self, size: int = 256):
        self.size = size
        self._loaded: OrderedDict[bytes | tuple[str, str], Any] = OrderedDict()
        self._pickles: dict[int, bytes] = {}  # id(function) -> its pickle
        self._results: dict[tuple[str, int], str] = {}  # (session, id(function)) -> result
        # ids are unique among live objects, and every function mapped is kept in _loaded

    def embedded(self, data: bytes) -> Any:
        """`cloudpickle.loads(data)`, a function loaded once."""
        if data in self._loaded:
            self._loaded.move_to_end(data)
            return self._loaded[data]
        value = payload.loads_value(data)
        if isinstance(value, FunctionType):  # never share a mutable value between tasks
            self._keep(data, value)
            self._pickles[id(value)] = data
        return value

    def from_result(self, session_id: str, result_id: str, load: Callable[[], Any]) -> Any:
        """The value of a result (`load()`), a function loaded once per session."""
        key = (session_id, result_id)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        value = load()
        if isinstance(value, FunctionType):
            self._keep(key, value)
            self._results[(session_id, id(value))] = result_id
        return value

    def pickle(self, function: FunctionType) -> bytes:
        """The pickle of `function`, made once."""
        data = self._pickles.get(id(function))
        if data is None:
            data = payload.dumps_value(function)
            self._keep(data, function)
            self._pickles[id(function)] = data
        return data

    def result_of(self, session_id: str, function: Any) -> str | None:
        return self._results.get((session_id, id(function)))

    def _keep(self, key: bytes | tuple[str, str], function: Any) -> None:
        self._loaded[key] = function
        while len(self._loaded) > self.size:
            _, old = self._loaded.popitem(last=False)
            if old not in self._loaded.values():
                self._pickles.pop(id(old), None)
                self._results = {k: v for k, v in self._results.items() if k[1] != id(old)}


def _gather(value: Any) -> Any:
    """Returns its argument, whose futures the worker resolved: a task that returns a
    structure of futures delegates its output to this."""
    return value


GATHER: TaskFunction[[Any], Any] = TaskFunction(_gather, Options())


class _FutureInside(Exception):
    pass


class TaskContext:
    """The task running in this function worker: subtasks submitted here are kept until the
    task function returns, then created in one batch (so that the future it returns, or
    the one it delegated to, can take the task's output over)."""

    def __init__(
        self,
        handler: TaskHandler,
        functions: FunctionCache,
        read_input: Callable[[str], bytes] | None = None,
    ):
        self.handler = handler
        self.functions = functions
        # How the data of a result is read: the batched mode has it in memory; ArmoniK's
        # worker protocol puts it in the task's data folder.
        self._read = read_input or self._read_file
        self.pending: list[tuple[TaskFunction[..., Any], Args, Kwargs, Future[Any]]] = []
        self.delegated: Future[Any] | None = None
        self.values: dict[str, Any] = {}
        self._uploaded: dict[int, tuple[Any, str]] = {}  # functions uploaded by this task

    # -- Owner of the futures it creates ---------------------------------------------------------

    def check_wait(self) -> None:
        raise WaitInsideTaskError(
            "a task cannot wait for another task's result: pass the future as an argument "
            "to another task (it becomes a data dependency), or return it / use delegate() "
            "to hand this task's output over to it"
        )

    def resolve(self, future: Future[Any]) -> Any:
        self.check_wait()

    def cancel(self, future: Future[Any]) -> bool:
        return False  # not submitted yet, and nothing else can refer to it

    def assign_id(self, future: Future[Any]) -> str:
        created = self.handler.create_results_metadata([future.name])
        return str(created[future.name].result_id)

    # -- Submitter -----------------------------------------------------------------------------

    def submit_task(self, task: TaskFunction[..., Any], args: Args, kwargs: Kwargs) -> Future[Any]:
        future: Future[Any] = Future(self, task.name)
        self.pending.append((task, args, kwargs, future))
        return future

    def map_tasks(
        self,
        task: TaskFunction[..., Any],
        arguments: Iterable[Args],
        batch_size: int,
        progress: bool | None,
    ) -> list[Future[Any]]:
        return [self.submit_task(task, args, {}) for args in arguments]

    def delegate(self, task: TaskFunction[..., Any], args: Args, kwargs: Kwargs) -> Future[Any]:
        if self.delegated is not None:
            raise RuntimeError("a task hands its output over once: delegate() called twice")
        self.delegated = self.submit_task(task, args, kwargs)
        return self.delegated

    # -- payload references --------------------------------------------------------------------

    def load_ref(self, result_id: str) -> Any:
        """The value of a result the payload refers to (a data dependency, normally)."""
        if result_id not in self.values:
            self.values[result_id] = self.functions.from_result(
                self.handler.session_id,
                result_id,
                lambda: payload.loads_value(self._read(result_id)),
            )
        return self.values[result_id]

    def _read_file(self, result_id: str) -> bytes:
        path = os.path.join(self.handler.data_folder, result_id)
        if not os.path.exists(path):  # not declared as a dependency (a hand-made payload)
            return bytes(self.handler.get_resource_data(result_id))
        with open(path, "rb") as file:
            return file.read()

    def load_embedded(self, data: bytes) -> Any:
        return self.functions.embedded(data)

    def ref_of(self, obj: Any) -> str | None:
        if isinstance(obj, Future):
            if obj._owner is not self:
                raise ValueError(f"{obj!r} comes from another task or cluster")
            return obj.result_id
        if isinstance(obj, FunctionType):
            uploaded = self._uploaded.get(id(obj))
            if uploaded is not None:
                return uploaded[1]
            return self.functions.result_of(self.handler.session_id, obj)
        return None

    # -- the end of the task -------------------------------------------------------------------

    def finish(self, value: Any) -> None:
        """Hand the output over to the delegated or returned future, or write `value`."""
        target, data = self.delegated, b""
        if target is not None:
            if value is not None and value is not target:
                raise RuntimeError(
                    f"the task delegated its output to {target!r} but returned {value!r}"
                )
        elif isinstance(value, Future):
            if value._owner is not self:
                raise ValueError(f"the task returned {value!r}, which it did not submit")
            target = value
        else:
            try:
                data, _ = payload.dumps(value, self._no_futures)
            except _FutureInside:
                target = self.submit_task(GATHER, (value,), {})
        self.flush(target)
        if target is None:
            self.handler.send_results({output: data for output in self.handler.expected_results})

    @staticmethod
    def _no_futures(obj: Any) -> None:
        if isinstance(obj, Future):
            raise _FutureInside
        return None

    def flush(self, target: Future[Any] | None = None) -> None:
        """Create the pending subtasks: their outputs, payloads and tasks in one call each;
        `target` takes this task's outputs over."""
        calls, self.pending = self.pending, []
        if not calls:
            return
        handler = self.handler
        outputs = list(handler.expected_results)
        if target is not None and target._result_id is None:
            target._result_id = outputs[0]
        unnamed = [f for *_, f in calls if f._result_id is None]
        if unnamed:
            names = [f"{f.name}#{i}" for i, f in enumerate(unnamed)]
            created = handler.create_results_metadata(names)
            for name, future in zip(names, unnamed, strict=True):
                future._result_id = created[name].result_id
        parts = self._function_parts([task.function for task, *_ in calls])
        payloads: dict[str, bytes] = {}
        dependencies: list[list[str]] = []
        for index, (task, args, kwargs, _) in enumerate(calls):
            function = parts[id(task.function)]
            data, refs = payload.encode_task(function, args, kwargs, self.ref_of)
            payloads[f"payload#{index}"] = data
            dependencies.append(refs)
        created = self._create_results(payloads)
        priority = handler.task_options.priority or 1
        definitions = []
        for index, (task, _, _, future) in enumerate(calls):
            expected = [future.result_id]
            if future is target:
                expected = outputs if future.result_id in outputs else [*expected, *outputs]
            definitions.append(
                TaskDefinition(
                    payload_id=created[f"payload#{index}"].result_id,
                    expected_output_ids=expected,
                    data_dependencies=dependencies[index],
                    options=armonik_options(task.task_options, priority),
                )
            )
        handler.submit_tasks(definitions, batch_size=len(definitions))

    def _create_results(self, blobs: dict[str, bytes]) -> dict[str, Any]:
        created: dict[str, Any] = {}
        for batch in payload.batches(blobs):
            created.update(self.handler.create_results(batch, batch_size=len(batch)))
        return created

    def _function_parts(self, functions: list[Any]) -> dict[int, Any]:
        """How each function travels in the payloads (by id): by reference to a result,
        embedded pickled (see payload.Pickled), or uploaded once now when many subtasks run
        it (then as a result of this task: not known to the session's later tasks)."""
        counts = Counter(id(f) for f in functions)
        parts: dict[int, Any] = {}
        blobs: dict[str, bytes] = {}
        shared: list[Any] = []
        for function in {id(f): f for f in functions}.values():
            key = id(function)
            if not isinstance(function, FunctionType) or self.ref_of(function) is not None:
                parts[key] = function
                continue
            data = self.functions.pickle(function)
            if payload.worth_sharing(len(data), counts[key]):
                blobs[f"function#{len(shared)}"] = data
                shared.append(function)
                parts[key] = function
            else:
                parts[key] = payload.Pickled(data, payload.qualified_name(function))
        if blobs:
            created = self._create_results(blobs)
            for index, function in enumerate(shared):
                self._uploaded[id(function)] = (function, created[f"function#{index}"].result_id)
        return parts
