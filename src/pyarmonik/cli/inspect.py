"""`pyarmonik sessions|tasks|results|partitions|watch|stats`: a companion to the `armonik` CLI.

Works against any ArmoniK control plane, through the official `armonik` client classes, and
takes filters in the `armonik` CLI's own language (its lark parser, from armonik_cli_core),
e.g. `-f 'status = error and created_at > 2025-06-01'`.

Exit codes: 0 success; 1 `watch`: some task failed or was cancelled; 2 bad usage (options,
filter syntax); 3 unknown session; 4 control plane unreachable; 5 request refused by the
server; 124 `watch --timeout` elapsed.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import grpc
import typer
import yaml
from armonik import common
from armonik.client import ArmoniKPartitions, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import Direction, TaskStatus
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pyarmonik.scheduling.timeline import TIMES, Times, session_stats

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_REFUSED = 1, 2, 3, 4, 5
EXIT_TIMEOUT = 124
FINAL = frozenset(
    {
        TaskStatus.COMPLETED,
        TaskStatus.ERROR,
        TaskStatus.TIMEOUT,
        TaskStatus.CANCELLED,
        TaskStatus.RETRIED,
    }
)
FAILED = frozenset({TaskStatus.ERROR, TaskStatus.TIMEOUT, TaskStatus.CANCELLED})

console = Console()
errors = Console(stderr=True)


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


class SortDirection(StrEnum):
    asc = "asc"
    desc = "desc"


EndpointOption = Annotated[
    str,
    typer.Option(
        "--endpoint", "-e", envvar="AK_ENDPOINT", help="Control plane address (host:port)."
    ),
]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="Output format.")]
FilterOption = Annotated[
    str | None,
    typer.Option(
        "--filter",
        "-f",
        help="Filter in the armonik CLI's language, e.g. "
        "'status = error and created_at > 2025-06-01'; quote ids: session_id = \"<id>\".",
    ),
]
SortByOption = Annotated[
    str | None, typer.Option("--sort-by", help="Field to sort on (default: creation time).")
]
DirectionOption = Annotated[SortDirection, typer.Option("--sort-direction")]
PageOption = Annotated[int, typer.Option(help="Page to show (0-based); -1: every page.")]
PageSizeOption = Annotated[int, typer.Option(help="Items per page (per request with -1).")]
SessionOption = Annotated[
    str | None, typer.Option("--session", "-s", help="Only this session (ANDed with --filter).")
]
DEFAULT_ENDPOINT = "127.0.0.1:5001"


# -- plumbing ---------------------------------------------------------------------------------


def _fail(message: str, code: int) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


@contextmanager
def _channel(endpoint: str) -> Iterator[grpc.Channel]:
    """A channel to the control plane; gRPC errors become a message and an exit code."""
    try:
        with grpc.insecure_channel(endpoint) as channel:
            yield channel
    except grpc.RpcError as error:
        code, details = error.code(), error.details()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.NOT_FOUND:
            raise _fail(details, EXIT_NOT_FOUND) from None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise _fail(
                f"cannot reach the control plane at {endpoint} ({details})", EXIT_UNREACHABLE
            ) from None
        raise _fail(f"{code.name}: {details}", EXIT_REFUSED) from None


def _parse_filter(kind: str, expression: str | None) -> Any:
    """The armonik CLI's parser for `kind` (Session, Task, Result, Partition)."""
    if not expression:
        return None
    from armonik_cli_core.filters import FilterParser, ParsingError, SemanticError
    from lark.exceptions import VisitError

    parser = FilterParser(
        obj=getattr(common, kind),
        filter=getattr(common.filter, f"{kind}Filter"),
        status_enum=getattr(common, f"{kind}Status", None),
        options_fields=kind in ("Task", "Session"),
        output_fields=kind == "Task",
    )
    try:
        return parser.parse(expression)
    except (ParsingError, SemanticError) as error:
        raise typer.BadParameter(str(error), param_hint="--filter") from None
    except VisitError as error:
        raise typer.BadParameter(str(error.orig_exc), param_hint="--filter") from None


def _sort_field(kind: str, name: str) -> Any:
    from armonik.common.filter.filter import FType

    fields = getattr(common.filter, f"{kind}Filter")._fields
    valid = [f for f, spec in fields.items() if spec[0] not in (FType.NA, FType.UNKNOWN)]
    if name not in valid:
        raise typer.BadParameter(
            f"{kind.lower()}s have no field {name!r}; one of {', '.join(valid)}",
            param_hint="--sort-by",
        )
    return getattr(getattr(common, kind), name)


def _plain(value: Any) -> Any:
    """JSON/YAML-friendly values: the `armonik` CLI's serialization, bytes as base64."""
    from armonik_cli_core.serialize import serialize

    def clean(item: Any) -> Any:
        if isinstance(item, bytes):
            return base64.b64encode(item).decode()
        if isinstance(item, dict):
            return {k: clean(v) for k, v in item.items()}
        if isinstance(item, list):
            return [clean(v) for v in item]
        return item

    return clean(serialize(value))


def _emit(data: Any, output: Output, table: Callable[[], Table]) -> None:
    if output is Output.json:
        print(json.dumps(_plain(data), indent=2))
    elif output is Output.yaml:
        print(yaml.safe_dump(_plain(data), sort_keys=False), end="")
    else:
        console.print(table())


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""


def _seconds(value: timedelta | None) -> str:
    return f"{value.total_seconds():.3f}s" if value else ""


def _name(status: Any) -> str:
    return str(status.name) if status is not None else ""


def _all_pages(
    fetch: Callable[[int, int], tuple[int, list[Any]]], page: int, page_size: int
) -> tuple[int, list[Any]]:
    """One page, or every page when page is -1."""
    if page_size < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--page-size")
    if page >= 0:
        return fetch(page, page_size)
    items: list[Any] = []
    current, total = 0, 0
    while True:
        total, batch = fetch(current, page_size)
        items += batch
        if not batch or len(items) >= total:
            return total, items
        current += 1


def _listing(
    kind: str,
    fetch: Callable[..., tuple[int, list[Any]]],
    columns: Sequence[tuple[str, Callable[[Any], str]]],
    expression: str | None,
    extra: Any,
    sort_by: str,
    direction: SortDirection,
    page: int,
    page_size: int,
    output: Output,
) -> None:
    where = _parse_filter(kind, expression)
    if extra is not None:
        where = extra if where is None else extra & where
    sort = _sort_field(kind, sort_by)
    order = Direction.DESC if direction is SortDirection.desc else Direction.ASC
    total, items = _all_pages(
        lambda number, size: fetch(where, number, size, sort, order), page, page_size
    )

    def table() -> Table:
        view = Table(caption=f"{len(items)} of {total} {kind.lower()}s", caption_justify="left")
        for title, _ in columns:
            view.add_column(title, overflow="fold")
        for item in items:
            view.add_row(*(cell(item) for _, cell in columns))
        return view

    _emit(items, output, table)


# -- listings ---------------------------------------------------------------------------------


def sessions(
    endpoint: EndpointOption = DEFAULT_ENDPOINT,
    filter: FilterOption = None,
    sort_by: SortByOption = None,
    sort_direction: DirectionOption = SortDirection.asc,
    page: PageOption = -1,
    page_size: PageSizeOption = 100,
    output: OutputOption = Output.table,
) -> None:
    """List sessions."""
    with _channel(endpoint) as channel:
        client = ArmoniKSessions(channel)
        _listing(
            "Session",
            lambda f, p, n, s, d: client.list_sessions(f, p, n, s, d),
            [
                ("Session", lambda s: s.session_id),
                ("Status", lambda s: _name(s.status)),
                ("Created", lambda s: _when(s.created_at)),
                ("Partitions", lambda s: ", ".join(s.partition_ids or [])),
                ("Duration", lambda s: _seconds(s.duration)),
            ],
            filter,
            None,
            sort_by or "created_at",
            sort_direction,
            page,
            page_size,
            output,
        )


def tasks(
    endpoint: EndpointOption = DEFAULT_ENDPOINT,
    session: SessionOption = None,
    filter: FilterOption = None,
    sort_by: SortByOption = None,
    sort_direction: DirectionOption = SortDirection.asc,
    page: PageOption = -1,
    page_size: PageSizeOption = 100,
    output: OutputOption = Output.table,
) -> None:
    """List tasks (with their errors)."""
    with _channel(endpoint) as channel:
        client = ArmoniKTasks(channel)
        _listing(
            "Task",
            lambda f, p, n, s, d: client.list_tasks(
                f, with_errors=True, page=p, page_size=n, sort_field=s, sort_direction=d
            ),
            [
                ("Task", lambda t: t.id),
                ("Status", lambda t: _name(t.status)),
                ("Partition", lambda t: t.options.partition_id if t.options else ""),
                ("Created", lambda t: _when(t.created_at)),
                ("Ended", lambda t: _when(t.ended_at)),
                ("Duration", lambda t: _seconds(t.creation_to_end_duration)),
                ("Error", lambda t: ((t.output.error or "") if t.output else "")[:120]),
            ],
            filter,
            common.Task.session_id == session if session else None,
            sort_by or "created_at",
            sort_direction,
            page,
            page_size,
            output,
        )


def results(
    endpoint: EndpointOption = DEFAULT_ENDPOINT,
    session: SessionOption = None,
    filter: FilterOption = None,
    sort_by: SortByOption = None,
    sort_direction: DirectionOption = SortDirection.asc,
    page: PageOption = -1,
    page_size: PageSizeOption = 100,
    output: OutputOption = Output.table,
) -> None:
    """List results."""
    with _channel(endpoint) as channel:
        client = ArmoniKResults(channel)
        _listing(
            "Result",
            lambda f, p, n, s, d: client.list_results(f, p, n, s, d),
            [
                ("Result", lambda r: r.result_id),
                ("Name", lambda r: r.name),
                ("Status", lambda r: _name(r.status)),
                ("Owner task", lambda r: r.owner_task_id),
                ("Size", lambda r: str(r.size)),
                ("Completed", lambda r: _when(r.completed_at)),
            ],
            filter,
            common.Result.session_id == session if session else None,
            sort_by or "created_at",
            sort_direction,
            page,
            page_size,
            output,
        )


def partitions(
    endpoint: EndpointOption = DEFAULT_ENDPOINT,
    filter: FilterOption = None,
    sort_by: SortByOption = None,
    sort_direction: DirectionOption = SortDirection.asc,
    page: PageOption = -1,
    page_size: PageSizeOption = 100,
    output: OutputOption = Output.table,
) -> None:
    """List partitions."""
    with _channel(endpoint) as channel:
        client = ArmoniKPartitions(channel)
        _listing(
            "Partition",
            lambda f, p, n, s, d: client.list_partitions(f, p, n, s, d),
            [
                ("Partition", lambda p: p.id),
                ("Priority", lambda p: str(p.priority)),
                ("Parents", lambda p: ", ".join(p.parent_partition_ids or [])),
                ("Pods reserved", lambda p: str(p.pod_reserved)),
                ("Pods max", lambda p: str(p.pod_max)),
            ],
            filter,
            None,
            sort_by or "id",
            sort_direction,
            page,
            page_size,
            output,
        )


# -- watch and stats --------------------------------------------------------------------------


def watch(
    session_id: Annotated[str, typer.Argument(help="The session to follow.")],
    endpoint: EndpointOption = DEFAULT_ENDPOINT,
    interval: Annotated[float, typer.Option(help="Seconds between two refreshes.")] = 0.5,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Follow a session's tasks by status until every task is final. Exit code 0 when all
    completed, 1 when some failed or were cancelled."""
    with _channel(endpoint) as channel:
        ArmoniKSessions(channel).get_session(session_id)  # unknown session: exit 3
        client = ArmoniKTasks(channel)
        where = common.Task.session_id == session_id
        deadline = None if timeout is None else time.monotonic() + timeout
        progress = Progress(
            TextColumn("{task.description:>12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        bars: dict[TaskStatus, Any] = {}
        with progress:
            overall = progress.add_task("final", total=None)
            while True:
                counts = client.count_tasks_by_status(where)
                total = sum(counts.values())
                for status in sorted(counts):
                    if status not in bars:
                        bars[status] = progress.add_task(status.name, total=total)
                for status, bar in bars.items():
                    progress.update(bar, total=total, completed=counts.get(status, 0))
                done = sum(n for s, n in counts.items() if s in FINAL)
                progress.update(overall, total=total, completed=done)
                if total and done == total:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise _fail(
                        f"{total - done} tasks still running after {timeout}s", EXIT_TIMEOUT
                    )
                time.sleep(interval)
    failed = sum(n for s, n in counts.items() if s in FAILED)
    if failed:
        raise _fail(f"{failed} of {total} tasks failed or were cancelled", EXIT_FAILED)


def task_stats(tasks: Sequence[Any]) -> dict[str, Any]:
    """`session_stats` (scheduling/timeline.py) of armonik Task objects: their times as
    seconds after the first creation (timedeltas, exact to the microsecond), its first and
    last times back as dates."""
    created = [t.created_at for t in tasks if t.created_at]
    origin = min(created) if created else None

    def seconds(value: datetime | None) -> float | None:
        return (value - origin).total_seconds() if value and origin else None

    stats = session_stats(
        [
            Times(
                t.status.name,
                *(seconds(getattr(t, name, None)) for name in TIMES),
            )
            for t in tasks
        ]
    )
    if origin is not None and "first_created_at" in stats:
        for key in ("first_created_at", "last_ended_at"):
            stats[key] = (origin + timedelta(seconds=stats[key])).isoformat()
    return stats


def stats(
    session_id: Annotated[str, typer.Argument(help="The session to measure.")],
    endpoint: EndpointOption = DEFAULT_ENDPOINT,
    page_size: Annotated[int, typer.Option(help="Tasks per ListTasksDetailed request.")] = 1000,
    output: OutputOption = Output.table,
) -> None:
    """Throughput and latency percentiles of a session, from every task's timestamps."""
    with _channel(endpoint) as channel:
        ArmoniKSessions(channel).get_session(session_id)  # unknown session: exit 3
        client = ArmoniKTasks(channel)
        where = common.Task.session_id == session_id
        _, tasks = _all_pages(
            lambda page, size: client.list_tasks(
                where, page=page, page_size=size, sort_field=common.Task.id, detailed=True
            ),
            -1,
            page_size,
        )
    result = {"session_id": session_id, **task_stats(tasks)}

    def table() -> Table:
        view = Table(title=f"Session {session_id}", show_header=False)
        view.add_column("", style="bold")
        view.add_column("")
        view.add_row("Tasks", f"{result['tasks']} ({result['completed']} completed)")
        view.add_row("By status", ", ".join(f"{k} {v}" for k, v in result["by_status"].items()))
        if result.get("throughput") is not None:
            view.add_row("Elapsed", f"{result['elapsed_seconds']:.3f} s")
            view.add_row("Throughput", f"{result['throughput']:.2f} tasks/s")
            for key, label in (("latency", "Latency"), ("processing", "Processing")):
                values = result[key]
                view.add_row(
                    label,
                    "  ".join(
                        f"{q} {v * 1000:.1f} ms" if v is not None else f"{q} -"
                        for q, v in values.items()
                    ),
                )
        return view

    _emit(result, output, table)


def register(app: typer.Typer) -> None:
    """Add the inspection commands to the `pyarmonik` command."""
    for command in (sessions, tasks, results, partitions, watch, stats):
        app.command()(command)
