"""The function worker: an ordinary ArmoniK worker (`armonik.worker`) that runs the
cloudpickled functions of pyarmonik tasks (payload format: docs/sdk.md).

    python -m pyarmonik.sdk.worker

It reads ArmoniK's `ComputePlane__WorkerChannel__*` / `ComputePlane__AgentChannel__*`
variables, so it runs under `pyarmonik agent`/`pyarmonik local` and under ArmoniK's own
polling agent alike.
"""

from __future__ import annotations

from armonik.common import Output
from armonik.worker import TaskHandler, armonik_worker

from pyarmonik.sdk import payload
from pyarmonik.sdk.context import FunctionCache, TaskContext, _task

FUNCTIONS = FunctionCache()


def process(handler: TaskHandler) -> Output:
    """Run one task: load its function and arguments, call it, then write its output or
    hand the output over to a subtask. Any exception becomes the task's error (no retry);
    only a crash of this process makes ArmoniK retry the task."""
    context = TaskContext(handler, FUNCTIONS)
    token = _task.set(context)
    try:
        _, (function, args, kwargs) = payload.decode_task(
            handler.payload, context.load_ref, context.load_embedded
        )
        context.finish(function(*args, **kwargs))
    except BaseException as error:  # SystemExit and KeyboardInterrupt of user code included
        return Output(payload.format_error(error))
    finally:
        _task.reset(token)
    return Output()


def main() -> None:
    armonik_worker()(process).run()


if __name__ == "__main__":
    main()
