"""The function worker: an ordinary ArmoniK worker (`armonik.worker`) that runs the
cloudpickled functions of pyarmonik tasks (payload format: docs/sdk.md).

    python -m pyarmonik.sdk.worker

It reads ArmoniK's `ComputePlane__WorkerChannel__*` / `ComputePlane__AgentChannel__*`
variables, so it runs under `pyarmonik agent`/`pyarmonik local` and under ArmoniK's own
polling agent alike. A pyarmonik agent also offers it the batched protocol
(`PYARMONIK_BATCH_SOCKET`, see sdk/batch.py): then it runs batches of tasks instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyarmonik.compute.frames import SOCKET_VARIABLE
from pyarmonik.sdk import payload
from pyarmonik.sdk.context import FunctionCache, TaskContext, _task

if TYPE_CHECKING:
    from armonik.common import Output
    from armonik.worker import TaskHandler

FUNCTIONS = FunctionCache()


def run_task(handler: Any, read_input: Callable[[str], bytes] | None = None) -> str | None:
    """Run one task: load its function and arguments, call it, then write its output or
    hand the output over to a subtask. Returns None, or the error details of an exception
    (the task's error, no retry); only a crash of this process makes ArmoniK retry it."""
    context = TaskContext(handler, FUNCTIONS, read_input)
    token = _task.set(context)
    try:
        _, (function, args, kwargs) = payload.decode_task(
            handler.payload, context.load_ref, context.load_embedded
        )
        context.finish(function(*args, **kwargs))
    except BaseException as error:  # SystemExit and KeyboardInterrupt of user code included
        return payload.format_error(error)
    finally:
        _task.reset(token)
    return None


def process(handler: TaskHandler) -> Output:
    """ArmoniK's worker entry point: one task per `Process` call."""
    from armonik.common import Output

    error = run_task(handler)
    return Output() if error is None else Output(error)


def main() -> None:
    batch_socket = os.environ.get(SOCKET_VARIABLE)
    if batch_socket:
        from pyarmonik.sdk.batch import BatchWorker

        BatchWorker(batch_socket).serve()
        return
    from armonik.worker import armonik_worker

    armonik_worker()(process).run()


if __name__ == "__main__":
    main()
