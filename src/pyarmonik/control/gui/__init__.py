"""The admin GUI: three static files and the JSON API they poll (`/api/...`), served by the
control plane's HTTP server beside /metrics.

Every answer comes from the scheduling services, i.e. from the Repository's filtered, sorted
and paged queries on indexed columns: no request loads more than a page of tasks, whatever
the size of the session.

With authentication on, every /api call identifies its caller (control/httpauth.py) and needs
the permission of the matching rpc (`PERMISSIONS` below); with session isolation on, it sees
only the caller's sessions. The pages and static files hold no data and stay open: the GUI
asks /api/me who it is, and for a token when nobody.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from pyarmonik.config import DEFAULT_CHUNK_SIZE, Settings
from pyarmonik.control.auth import Unauthenticated
from pyarmonik.control.gui.agents import AgentDirectory
from pyarmonik.control.httpauth import HttpAuth
from pyarmonik.control.isolation import Visibility
from pyarmonik.domain.errors import (
    ArmoniKError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from pyarmonik.domain.filters import MATCH_ALL, Condition, Filter, Kind, ListQuery, Op, Sort
from pyarmonik.domain.records import Partition, Result, Session, Task
from pyarmonik.domain.statuses import ResultStatus, SessionStatus, TaskStatus
from pyarmonik.scheduling.backends import Backends, now
from pyarmonik.scheduling.results import ResultService
from pyarmonik.scheduling.sessions import SessionService
from pyarmonik.scheduling.tasks import TaskService

STATIC = Path(__file__).parent / "static"
FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "pictures.js": "text/javascript",
    "style.css": "text/css",
}
PAGES = (
    "/",
    "/sessions",
    "/tasks",
    "/tasks/{task_id}",
    "/results",
    "/partitions",
    "/agents",
    "/stream",
    "/graph",
    "/time",
)
# Each action needs the permission of the rpc doing the same.
SESSION_ACTIONS = {
    "pause": "Sessions:PauseSession",
    "resume": "Sessions:ResumeSession",
    "cancel": "Sessions:CancelSession",
    "close": "Sessions:CloseSession",
    "purge": "Sessions:PurgeSession",
    "delete": "Sessions:DeleteSession",
}
# The permission each /api route needs: that of the rpc answering the same question (None:
# authentication only; session actions are checked per action).
PERMISSIONS: dict[str, str | None] = {
    "/api/dashboard": "Tasks:CountTasksByStatus",
    "/api/sessions": "Sessions:ListSessions",
    "/api/sessions/{session_id}/{action}": None,
    "/api/tasks": "Tasks:ListTasks",
    "/api/tasks/{task_id}": "Tasks:GetTask",
    "/api/results": "Results:ListResults",
    "/api/results/{result_id}/data": "Results:DownloadResultData",
    "/api/partitions": "Partitions:ListPartitions",
    "/api/agents": "Partitions:ListPartitions",
    # The pictures (pictures.py): tasks listed, or counted for the dashboard's flow.
    "/api/pictures/stream": "Tasks:ListTasks",
    "/api/pictures/graph": "Tasks:ListTasks",
    "/api/pictures/breakdown": "Tasks:ListTasks",
    "/api/pictures/flow": "Tasks:CountTasksByStatus",
}
TASK_SORTS = frozenset(
    {
        "task_id",
        "status",
        "created_at",
        "submitted_at",
        "started_at",
        "ended_at",
        "creation_to_end_duration",
        "processing_to_end_duration",
        "opt_partition_id",
        "opt_priority",
        "owner_pod_id",
    }
)
SESSION_SORTS = frozenset({"session_id", "status", "created_at", "closed_at", "duration"})
RESULT_SORTS = frozenset({"result_id", "name", "status", "created_at", "completed_at", "size"})
HTTP_STATUS = {
    NotFound: 404,
    InvalidArgument: 400,
    FailedPrecondition: 409,
    Unavailable: 503,
    Unauthenticated: 401,
    PermissionDenied: 403,
}
MAX_PAGE_SIZE = 500
# POSTs must carry this header: a page of another site cannot add it without a CORS
# preflight, which this server never grants (no cross-site session actions).
ACTION_HEADER = "X-Requested-With"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
VISIBILITY_KEY = web.RequestKey("visibility", Visibility)


# -- query parameters -------------------------------------------------------------------------


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer") from None
    return min(max(value, low), high)


def _eq(column: str, value: str) -> Condition:
    return Condition(column, Kind.STRING, Op.EQ, value)


def _status(value: int) -> Condition:
    return Condition("status", Kind.STATUS, Op.EQ, value)


def _statuses(enum: type[TaskStatus | SessionStatus | ResultStatus], text: str) -> list[int]:
    """Comma-separated status names (any case) to their numbers."""
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in enum.__members__]
    if unknown:
        raise InvalidArgument(f"unknown status {', '.join(unknown)}")
    return [int(enum[name]) for name in names]


def _dnf(conditions: list[Condition], alternatives: list[Condition]) -> Filter:
    """conditions AND (any of alternatives), in disjunctive normal form."""
    base = tuple(conditions)
    if alternatives:
        return tuple((*base, alternative) for alternative in alternatives)
    return (base,) if base else MATCH_ALL


def _list_query(
    request: web.Request, where: Filter, sorts: frozenset[str], default_sort: str
) -> ListQuery:
    sort = request.query.get("sort", default_sort)
    if sort not in sorts:
        raise InvalidArgument(f"cannot sort on {sort!r}; one of {', '.join(sorted(sorts))}")
    return ListQuery(
        filter=where,
        sort=Sort(sort, descending=request.query.get("desc", "1") in ("1", "true")),
        page=_int(request, "page", 0, 0, 10**9),
        page_size=_int(request, "size", 50, 1, MAX_PAGE_SIZE),
    )


def _text(request: web.Request, name: str) -> str:
    return request.query.get(name, "").strip()


# -- JSON views of the records ----------------------------------------------------------------


def _named(counts: dict[int, int]) -> dict[str, int]:
    return {TaskStatus(status).name: n for status, n in sorted(counts.items())}


def session_json(session: Session) -> dict[str, Any]:
    row = session.to_row()
    row["status"] = session.status.name
    return row


def task_json(task: Task, full: bool = False) -> dict[str, Any]:
    row = task.to_row()
    row["status"] = task.status.name
    row["attempt"] = len(task.retry_of_ids) + 1
    if not full:  # a table row: drop what may be long
        for column in ("parent_task_ids", "data_dependencies", "expected_output_ids"):
            row[column] = len(row[column])
        row["error"] = task.error[:300]
    return row


def result_json(result: Result) -> dict[str, Any]:
    row = result.to_row()
    del row["opaque_id"]
    row["status"] = result.status.name
    return row


def _page(items: list[dict[str, Any]], total: int, query: ListQuery) -> dict[str, Any]:
    return {"items": items, "total": total, "page": query.page, "size": query.page_size}


def _visible(request: web.Request) -> Visibility:
    """What the caller of a guarded route may see (set by `AdminGui._guard`)."""
    return request[VISIBILITY_KEY]


class AdminGui:
    """Routes of the GUI and of its JSON API, on the scheduling services of `backends`;
    `auth` identifies callers (none without it: everything open, as before)."""

    def __init__(self, backends: Backends, auth: HttpAuth | None = None):
        self.backends = backends
        self.auth = auth or HttpAuth(Settings(), None)
        self.sessions = SessionService(backends)
        self.tasks = TaskService(backends)
        self.results = ResultService(backends, DEFAULT_CHUNK_SIZE)
        self.agents = AgentDirectory(self.tasks, self.sessions)
        self.files = {name: (STATIC / name).read_bytes() for name in FILES}

    def install(self, app: web.Application) -> None:
        from pyarmonik.control.gui.pictures import PictureApi  # it builds on this module

        router = app.router
        for page in PAGES:
            router.add_get(page, self.page)
        router.add_get("/static/{name}", self.static)
        router.add_get("/favicon.ico", self.no_icon)
        router.add_get("/api/me", self.me)
        for route, handler in (
            ("/api/dashboard", self.dashboard),
            ("/api/sessions", self.list_sessions),
            ("/api/tasks", self.list_tasks),
            ("/api/tasks/{task_id}", self.task),
            ("/api/results", self.list_results),
            ("/api/results/{result_id}/data", self.download),
            ("/api/partitions", self.list_partitions),
            ("/api/agents", self.list_agents),
        ):
            router.add_get(route, self._guard(PERMISSIONS[route], handler))
        for route, picture in PictureApi(self).routes().items():
            router.add_get(route, self._guard(PERMISSIONS[route], picture))
        route = "/api/sessions/{session_id}/{action}"
        router.add_post(route, self._guard(PERMISSIONS[route], self.session_action))
        app.middlewares.append(self._errors)

        async def close(_: web.Application) -> None:
            await self.agents.close()

        app.on_cleanup.append(close)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Domain errors of /api/... calls as JSON with their HTTP status."""
        if not request.path.startswith("/api/"):
            return await handler(request)
        if request.method == "POST" and request.headers.get(ACTION_HEADER) != "pyarmonik":
            return web.json_response({"error": f"missing header {ACTION_HEADER}"}, status=403)
        try:
            return await handler(request)
        except ArmoniKError as error:
            status = next((c for k, c in HTTP_STATUS.items() if isinstance(error, k)), 500)
            # RFC 6750: a 401 names the scheme it wants.
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return web.json_response({"error": str(error)}, status=status, headers=headers)

    def _guard(self, permission: str | None, handler: Handler) -> Handler:
        """`handler` for callers holding `permission` (and identified, with authentication
        on), with what they may see in the request (`_visible`)."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            identity = await self.auth.check(request, permission)
            request[VISIBILITY_KEY] = self.auth.visibility(identity)
            return await handler(request)

        return guarded

    # -- static files ----------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        """Every page is the same document; app.js draws the one of the URL."""
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in FILES:
            raise web.HTTPNotFound()
        return self._file(name)

    async def no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    def _file(self, name: str) -> web.Response:
        return web.Response(
            body=self.files[name],
            content_type=FILES[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    # -- API ---------------------------------------------------------------------------------

    async def me(self, request: web.Request) -> web.Response:
        """Who the GUI runs as, what it may do, and whether it must log in first. Never a
        401: an unidentified caller is an answer too (`authenticated` false, and why)."""
        required = self.auth.required
        answer: dict[str, Any] = {
            "username": "",
            "roles": [],
            "permissions": [],
            "authenticated": False,
            "authentication_required": required,
            "via": "",
            "error": "",
        }
        try:
            caller = await self.auth.caller(request)
        except Unauthenticated as error:
            return web.json_response({**answer, "error": str(error)})
        identity, authenticator = caller.identity, self.auth.authenticator
        if authenticator is not None:  # GetCurrentUser's answer in each mode
            username, roles, permissions = authenticator.current_user(identity)
        else:
            username, roles, permissions = identity.username, [], list(identity.permissions)
        answer.update(
            username=username,
            roles=roles,
            permissions=permissions,
            authenticated=required,  # with authentication off, nobody is identified
            via=caller.via,
        )
        return web.json_response(answer)

    async def _counts(self, where: Filter) -> dict[str, int]:
        return _named(await self.tasks.count_by_status(where))

    async def _partitions(self) -> list[Partition]:
        async with self.backends.database.read() as repository:
            partitions, _ = await repository.list_page(Partition, ListQuery(page_size=1000))
        return partitions

    async def _check_session(self, request: web.Request, session_id: str, what: str) -> None:
        """NotFound (`what`) unless session isolation lets the caller see the session."""
        visible = _visible(request)
        if visible.user is not None:
            try:
                session = await self.sessions.get(session_id)
            except NotFound:
                raise NotFound(f"{what} not found") from None
            visible.check(session.created_by_user, what)

    async def dashboard(self, request: web.Request) -> web.Response:
        """Tasks by status overall, per recent session and per partition; tasks ended per
        interval over the last `window` seconds (of one session, or of the recent ones)."""
        visible = _visible(request)
        window = _int(request, "window", 300, 10, 86400)
        interval = max(1, window // 60)
        recent, session_total = await self.sessions.list_page(
            ListQuery(
                filter=visible.sessions(MATCH_ALL),
                sort=Sort("created_at", descending=True),
                page_size=8,
            )
        )
        sessions = [
            {**session_json(s), "counts": await self._counts(((_eq("session_id", s.session_id),),))}
            for s in recent
        ]
        partitions = [
            {
                "partition_id": p.partition_id,
                "counts": await self._counts(
                    visible.within(((_eq("opt_partition_id", p.partition_id),),))
                ),
            }
            for p in await self._partitions()
        ]
        chosen = _text(request, "session")
        scope = [chosen] if chosen else [s.session_id for s in recent]
        stamp = now()
        since = stamp - window
        buckets = [
            {"t": since + k * interval, "completed": 0, "failed": 0}
            for k in range(math.ceil(window / interval))
        ]
        if scope:
            ended = await self.tasks.count_ended_by_interval(
                visible.within(tuple((_eq("session_id", s),) for s in scope)), since, interval
            )
            for k, status, n in ended:
                if 0 <= k < len(buckets):
                    key = "completed" if status == TaskStatus.COMPLETED else "failed"
                    buckets[k][key] += n
        return web.json_response(
            {
                "now": stamp,
                "totals": await self._counts(visible.within(MATCH_ALL)),
                "session_total": session_total,
                "sessions": sessions,
                "partitions": partitions,
                "throughput": {"interval": interval, "scope": chosen, "buckets": buckets},
            }
        )

    async def list_sessions(self, request: web.Request) -> web.Response:
        conditions = []
        if text := _text(request, "q"):
            conditions.append(Condition("session_id", Kind.STRING, Op.CONTAINS, text))
        statuses = [_status(s) for s in _statuses(SessionStatus, _text(request, "status"))]
        where = _visible(request).sessions(_dnf(conditions, statuses))
        query = _list_query(request, where, SESSION_SORTS, "created_at")
        sessions, total = await self.sessions.list_page(query)
        items = [
            {**session_json(s), "counts": await self._counts(((_eq("session_id", s.session_id),),))}
            for s in sessions
        ]
        return web.json_response(_page(items, total, query))

    async def session_action(self, request: web.Request) -> web.Response:
        action, session_id = request.match_info["action"], request.match_info["session_id"]
        if action not in SESSION_ACTIONS:
            raise NotFound(f"no session action {action!r}")
        await self.auth.check(request, SESSION_ACTIONS[action])
        await self._check_session(request, session_id, f"Session {session_id}")
        method: Callable[[str], Awaitable[Session]] = getattr(self.sessions, action)
        session = await method(session_id)
        return web.json_response({"session": session_json(session)})

    async def list_tasks(self, request: web.Request) -> web.Response:
        """Filters: session, partition, created_by, owner (exact), q (id contains), error
        (contains), status (comma-separated names); with a session, counts by status too."""
        scope = [
            _eq(column, value)
            for column, name in (("session_id", "session"), ("opt_partition_id", "partition"))
            if (value := _text(request, name))
        ]
        conditions = scope + [
            _eq(column, value)
            for column, name in (("created_by", "created_by"), ("owner_pod_id", "owner"))
            if (value := _text(request, name))
        ]
        for column, name in (("task_id", "q"), ("error", "error")):
            if value := _text(request, name):
                conditions.append(Condition(column, Kind.STRING, Op.CONTAINS, value))
        statuses = [_status(s) for s in _statuses(TaskStatus, _text(request, "status"))]
        visible = _visible(request)
        where = visible.within(_dnf(conditions, statuses))
        query = _list_query(request, where, TASK_SORTS, "created_at")
        tasks, total = await self.tasks.list_page(query)
        answer = _page([task_json(t) for t in tasks], total, query)
        if scope:
            answer["counts"] = await self._counts(visible.within((tuple(scope),)))
        return web.json_response(answer)

    async def task(self, request: web.Request) -> web.Response:
        """A task with its attempts, ancestors, children (not its retries) and results."""
        task = await self.tasks.get(request.match_info["task_id"])
        await self._check_session(request, task.session_id, f"Task {task.task_id}")
        attempts, _ = await self.tasks.list_page(
            ListQuery(
                filter=((_eq("initial_task_id", task.initial_task_id),),),
                sort=Sort("created_at"),
                page_size=100,
            )
        )
        ancestor_ids = [p for p in task.parent_task_ids if p != task.session_id][-20:]
        found = {}
        if ancestor_ids:
            parents, _ = await self.tasks.list_page(
                ListQuery(filter=tuple((_eq("task_id", p),) for p in ancestor_ids), page_size=20)
            )
            found = {p.task_id: p for p in parents}
        children, children_total = await self.tasks.list_page(
            ListQuery(
                filter=(
                    (
                        _eq("created_by", task.task_id),
                        Condition("initial_task_id", Kind.STRING, Op.NE, task.initial_task_id),
                    ),
                ),
                sort=Sort("created_at"),
                page_size=50,
            )
        )
        roles = {task.payload_id: "payload"}
        roles.update(dict.fromkeys(task.data_dependencies[:100], "dependency"))
        roles.update(dict.fromkeys(task.expected_output_ids[:100], "output"))
        results, _ = await self.results.list_page(
            ListQuery(filter=tuple((_eq("result_id", r),) for r in roles), page_size=len(roles))
        )
        return web.json_response(
            {
                "task": task_json(task, full=True),
                "attempts": [task_json(t) for t in attempts],
                "parents": [task_json(found[p]) for p in ancestor_ids if p in found],
                "children": {"items": [task_json(c) for c in children], "total": children_total},
                "results": [{**result_json(r), "role": roles[r.result_id]} for r in results],
            }
        )

    async def list_results(self, request: web.Request) -> web.Response:
        conditions = [
            _eq(column, value)
            for column, name in (("session_id", "session"), ("owner_task_id", "owner"))
            if (value := _text(request, name))
        ]
        if text := _text(request, "q"):
            conditions.append(Condition("name", Kind.STRING, Op.CONTAINS, text))
        statuses = [_status(s) for s in _statuses(ResultStatus, _text(request, "status"))]
        where = _visible(request).within(_dnf(conditions, statuses))
        query = _list_query(request, where, RESULT_SORTS, "created_at")
        results, total = await self.results.list_page(query)
        return web.json_response(_page([result_json(r) for r in results], total, query))

    async def download(self, request: web.Request) -> web.StreamResponse:
        result = await self.results.get(request.match_info["result_id"])
        await self._check_session(request, result.session_id, f"Result {result.result_id}")
        chunks = (await self.results.download(result.session_id, result.result_id)).__aiter__()
        first = await anext(chunks, b"")  # a missing blob fails here, before any byte is sent
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", result.name or result.result_id)
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{filename}"',
            }
        )
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    async def list_partitions(self, request: web.Request) -> web.Response:
        items = [
            {
                **p.to_row(),
                "counts": await self._counts(
                    _visible(request).within(((_eq("opt_partition_id", p.partition_id),),))
                ),
            }
            for p in await self._partitions()
        ]
        return web.json_response({"items": items, "total": len(items)})

    async def list_agents(self, request: web.Request) -> web.Response:
        return web.json_response({"items": await self.agents.snapshot(), "now": now()})
