"""The function worker's wire format (documented in docs/sdk.md).

A task payload is one line of JSON (the header), a newline, then the cloudpickled tuple
`(function, args, kwargs)`. Two pickle *persistent ids* may appear in it:
`("pyarmonik.result", result_id)` stands for the value of a result (a future, a value
uploaded with `put`, a function uploaded once), which is a data dependency of the task;
`("pyarmonik.pickle", data)` stands for `cloudpickle.loads(data)`: the SDK embeds functions
this way, so that a worker unpickles each function once and re-embeds it as is.
Outputs and uploaded values are plain cloudpickle. A failed task returns `Output.error`
with the Python traceback and a last line `pyarmonik-exception: {json}` describing the
exception, so that the client can raise it again.
"""

from __future__ import annotations

import io
import json
import pickle
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from pyarmonik.sdk.errors import PayloadError, RemoteTraceback, TaskError

FORMAT = "pyarmonik-task/1"
REF = "pyarmonik.result"
EMBEDDED = "pyarmonik.pickle"
ERROR_MARKER = "pyarmonik-exception: "
PYTHON = ".".join(map(str, sys.version_info[:3]))
CLOUDPICKLE = str(cloudpickle.__version__)

Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class Pickled:
    """An object pickled already, embedded as such in a payload."""

    __slots__ = ("data", "name")

    def __init__(self, data: bytes, name: str = "?"):
        self.data = data
        self.name = name


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle that replaces the objects `ref_of` knows by references to results."""

    def __init__(self, file: io.BytesIO, ref_of: Callable[[Any], str | None]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._ref_of = ref_of
        self.refs: dict[str, None] = {}  # ordered set

    def persistent_id(self, obj: Any) -> tuple[str, Any] | None:
        if type(obj) is Pickled:
            return (EMBEDDED, obj.data)
        result_id = self._ref_of(obj)
        if result_id is None:
            return None
        self.refs[result_id] = None
        return (REF, result_id)


class _Unpickler(pickle.Unpickler):
    def __init__(
        self,
        file: io.BytesIO,
        load_ref: Callable[[str], Any],
        load_embedded: Callable[[bytes], Any],
    ):
        super().__init__(file)
        self._load_ref = load_ref
        self._load_embedded = load_embedded

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 2:
            if pid[0] == REF:
                return self._load_ref(pid[1])
            if pid[0] == EMBEDDED:
                return self._load_embedded(pid[1])
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def qualified_name(obj: Any) -> str:
    if isinstance(obj, Pickled):
        return obj.name
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def dumps(obj: Any, ref_of: Callable[[Any], str | None]) -> tuple[bytes, list[str]]:
    """cloudpickle `obj` with references; returns the bytes and the result ids referenced."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, ref_of)
    pickler.dump(obj)
    return buffer.getvalue(), list(pickler.refs)


def encode_task(
    function: Callable[..., Any] | Pickled,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ref_of: Callable[[Any], str | None],
) -> tuple[bytes, list[str]]:
    """A task payload and its data dependencies; `function` may be given pickled already."""
    header = {
        "format": FORMAT,
        "python": PYTHON,
        "cloudpickle": CLOUDPICKLE,
        "function": qualified_name(function),
    }
    body, refs = dumps((function, args, kwargs), ref_of)
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body, refs


def read_header(payload: bytes) -> tuple[dict[str, Any], memoryview]:
    """The header of a payload, checked against this process's versions, and its body."""
    end = payload.find(b"\n", 0, 4096)
    try:
        header = json.loads(payload[:end]) if end > 0 else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or not str(header.get("format", "")).startswith(
        "pyarmonik-task/"
    ):
        raise PayloadError(
            "this payload is not a pyarmonik task (it must start with a JSON header line)"
        )
    if header["format"] != FORMAT:
        raise PayloadError(f"payload format {header['format']} is not {FORMAT} of this worker")
    mismatches = [
        f"{name} {header.get(key)} on the client, {ours} on the worker"
        for name, key, ours in (("Python", "python", PYTHON), ("cloudpickle", "cloudpickle", CLOUDPICKLE))
        if _minor(str(header.get(key, ""))) != _minor(ours)
    ]  # fmt: skip
    if mismatches:
        raise PayloadError(
            f"task {header.get('function', '?')} was pickled by another version: "
            f"{'; '.join(mismatches)}. Run the client and the workers with the same Python "
            "and cloudpickle versions (major.minor)."
        )
    return header, memoryview(payload)[end + 1 :]


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def decode_task(
    payload: bytes,
    load_ref: Callable[[str], Any],
    load_embedded: Callable[[bytes], Any] = pickle.loads,
) -> tuple[dict[str, Any], Call]:
    """The header and `(function, args, kwargs)` of a payload."""
    header, body = read_header(payload)
    try:
        unpickler = _Unpickler(io.BytesIO(body), load_ref, load_embedded)
        function, args, kwargs = unpickler.load()
    except Exception as error:
        hint = ""
        if isinstance(error, ImportError | AttributeError):
            hint = (
                " (functions and classes of importable modules travel by reference: their "
                "module must be importable on the workers too; those of __main__ travel by value)"
            )
        raise PayloadError(
            f"cannot load task {header.get('function', '?')}: {type(error).__name__}: {error}{hint}"
        ) from error
    return header, (function, tuple(args), dict(kwargs))


# A function travels in each payload unless its copies would exceed this: then it travels
# once, as a result of its own that the tasks depend on (a dependency costs the agent more
# than a few copied kilobytes).
SHARE_FUNCTION_ABOVE = 64 * 1024


def worth_sharing(size: int, copies: int) -> bool:
    return size * copies > SHARE_FUNCTION_ABOVE


# Inline data sent per CreateResults call (below the 4 MiB gRPC peers accept by default).
BATCH_BYTES = 3 * 1024 * 1024


def batches(blobs: dict[str, bytes], limit: int = BATCH_BYTES) -> Iterator[dict[str, bytes]]:
    """`blobs` in batches of at most `limit` bytes (a bigger blob alone in its batch)."""
    batch: dict[str, bytes] = {}
    size = 0
    for name, data in blobs.items():
        if batch and size + len(data) > limit:
            yield batch
            batch, size = {}, 0
        batch[name] = data
        size += len(data)
    if batch:
        yield batch


def dumps_value(value: Any) -> bytes:
    """An output, or a value uploaded with `put`."""
    return bytes(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def loads_value(data: bytes) -> Any:
    return pickle.loads(data)


# -- errors ------------------------------------------------------------------------------------


def format_error(error: BaseException) -> str:
    """`Output.error` details of a task that raised `error`: its traceback as Python prints
    it (first frame, the worker's own, left out), then the marker line."""
    tb = error.__traceback__.tb_next if error.__traceback__ else None
    text = "".join(traceback.format_exception(type(error), error, tb))
    try:
        message = str(error)
    except Exception:  # a broken __str__ must not hide the error
        message = f"<{type(error).__name__}: str() failed>"
    info: dict[str, Any] = {
        "module": type(error).__module__,
        "qualname": type(error).__qualname__,
        "message": message,
        "args": list(error.args),
    }
    try:
        marker = json.dumps(info)
    except (TypeError, ValueError):  # arguments that JSON cannot hold: rebuilt from the message
        marker = json.dumps({**info, "args": None})
    return f"{text.rstrip()}\n{ERROR_MARKER}{marker}"


def rebuild_error(details: str, fallback: str) -> BaseException:
    """The exception described by task error `details` (its type when this process has it),
    with the remote traceback as its cause; a TaskError(fallback) when there is no marker."""
    lines = details.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith(ERROR_MARKER):
            try:
                info = json.loads(lines[index][len(ERROR_MARKER) :])
            except ValueError:
                break
            remote = "\n".join(lines[:index] + lines[index + 1 :])
            error = _instantiate(info) or TaskError(
                f"{info.get('module')}.{info.get('qualname')}: {info.get('message')}"
            )
            error.__cause__ = RemoteTraceback(remote)
            return error
    error = TaskError(fallback)
    if details:
        error.__cause__ = RemoteTraceback(details)
    return error


def _instantiate(info: dict[str, Any]) -> BaseException | None:
    """An exception of the remote type, only if its module is already imported here (an
    error message never makes the client import code), and only an Exception (a SystemExit
    raised in a task must not end the client)."""
    kind: Any = sys.modules.get(str(info.get("module")))
    for part in str(info.get("qualname", "")).split("."):
        kind = getattr(kind, part, None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        return None
    args = info.get("args")
    try:
        error = kind(*args) if isinstance(args, list) else kind(info.get("message", ""))
    except Exception:
        return None
    return error if isinstance(error, BaseException) else None
