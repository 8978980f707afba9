"""An agent played in-process: what a polling agent does to the database around one task
(scheduling.processing.TaskProcessing), without a worker, so tests decide each outcome."""

from __future__ import annotations

from pyarmonik.domain.ids import new_id
from pyarmonik.domain.records import Result, Session, Task
from pyarmonik.scheduling.backends import Backends, now
from pyarmonik.scheduling.processing import StoredResult, TaskOutcome, TaskProcessing, Verdict
from pyarmonik.scheduling.tasks import TaskCreation, plan_tasks
from pyarmonik.storage.objects import single_chunk


async def _nobody_alive(owner: str, task_id: str) -> bool:
    return False


async def run_task(
    backends: Backends,
    task_id: str,
    outcome: str = "ok",
    data: bytes = b"42",
    children: int = 0,
    owner: str = "127.0.0.1:1",
) -> Task:
    """Acquire, start and end a task as an agent would: `ok` (its outputs get `data`, and it
    submits `children` subtasks), `error` (no retry) or `crash` (retried while attempts
    remain). Returns the task as started."""
    processing = TaskProcessing(backends, owner, "test-host")
    acquisition = await processing.acquire(task_id, _nobody_alive, now())
    assert acquisition.verdict is Verdict.ACQUIRED, acquisition.reason
    assert acquisition.task is not None and acquisition.session is not None
    task = await processing.start(acquisition.task, now())
    assert task is not None
    if outcome == "error":
        await processing.fail(task, "bad input: the payload says so", retry=False)
    elif outcome == "crash":
        await processing.fail(task, "Worker returned error UNAVAILABLE: crashed", retry=True)
    else:
        stored = []
        for output in task.expected_output_ids:
            opaque_id, size = await backends.objects.put(single_chunk(data))
            stored.append(StoredResult(output, opaque_id, size))
        created, subtasks = _children(acquisition.session, task, children)
        await processing.complete(task, TaskOutcome(created, stored, subtasks), now())
    return task


def _children(session: Session, parent: Task, count: int) -> tuple[list[Result], list[Task]]:
    """`count` subtasks reading the parent's payload, each with a new output."""
    outputs = [
        Result(
            result_id=new_id(),
            session_id=session.session_id,
            name=f"child-{i}",
            created_by=parent.task_id,
            created_at=now(),
        )
        for i in range(count)
    ]
    if not count:
        return [], []
    creations = [TaskCreation(parent.payload_id, [o.result_id]) for o in outputs]
    return outputs, plan_tasks(session, None, creations, parent=parent)
