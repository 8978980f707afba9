"""The /api routes of the GUI's pictures: task stream, session graph, stage breakdown and the
dashboard's flow per partition. The data comes from `scheduling/timeline.py`, which says how
each answer is bounded (bars up to 2,000 then per-agent buckets, nodes up to 1,000 then
counts per generation, fixed-size figures); here only the scope is chosen:

- `session=ID`: that session (NotFound unless the caller may see it), over its whole span;
- else the stream and the flow cover the last `window` seconds (default 600) of every
  session the caller may see, and the graph and the breakdown the most recent such session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pyarmonik.control.gui import AdminGui, _eq, _int, _text, _visible
from pyarmonik.domain.filters import MATCH_ALL, Filter, ListQuery, Sort
from pyarmonik.scheduling.backends import now
from pyarmonik.scheduling.timeline import Pictures

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PictureApi:
    """Handlers of the picture routes of `gui` (guarded by `AdminGui._guard`)."""

    def __init__(self, gui: AdminGui):
        self.gui = gui
        self.pictures = Pictures(gui.backends)

    def routes(self) -> dict[str, Handler]:
        return {
            "/api/pictures/stream": self.stream,
            "/api/pictures/graph": self.graph,
            "/api/pictures/breakdown": self.breakdown,
            "/api/pictures/flow": self.flow,
        }

    async def _session(self, request: web.Request, latest: bool) -> str:
        """The session asked for (checked visible), else with `latest` the caller's most
        recent one ('' when none)."""
        if session_id := _text(request, "session"):
            await self.gui._check_session(request, session_id, f"Session {session_id}")
            return session_id
        if not latest:
            return ""
        recent, _ = await self.gui.sessions.list_page(
            ListQuery(
                filter=_visible(request).sessions(MATCH_ALL),
                sort=Sort("created_at", descending=True),
                page_size=1,
            )
        )
        return recent[0].session_id if recent else ""

    def _where(self, request: web.Request, session_id: str) -> Filter:
        scope: Filter = ((_eq("session_id", session_id),),) if session_id else MATCH_ALL
        return _visible(request).within(scope)

    async def _window(
        self, request: web.Request, session_id: str, where: Filter, held: bool
    ) -> tuple[float, float] | None:
        """A session's span (from its first acquisition with `held`; None before), else the
        last `window` seconds."""
        if not session_id:
            until = now()
            return until - _int(request, "window", 600, 1, 7 * 86400), until
        created, acquired, last = await self.pictures.span(where)
        first = acquired if held else created
        if first is None:
            return None
        return first, max(last or first, first + 1e-3)

    async def stream(self, request: web.Request) -> web.Response:
        session_id = await self._session(request, latest=False)
        where = self._where(request, session_id)
        window = await self._window(request, session_id, where, held=True)
        answer: dict[str, Any] = {"mode": "bars", "agents": [], "bars": []}
        if window is not None:
            answer = await self.pictures.stream(where, *window)
        return web.json_response({"session": session_id, **answer})

    async def graph(self, request: web.Request) -> web.Response:
        session_id = await self._session(request, latest=True)
        answer: dict[str, Any] = {"mode": "graph", "nodes": [], "edges": []}
        if session_id:
            answer = await self.pictures.graph(self._where(request, session_id))
        return web.json_response({"session": session_id, **answer})

    async def breakdown(self, request: web.Request) -> web.Response:
        session_id = await self._session(request, latest=True)
        answer: dict[str, Any] = {"stats": {"tasks": 0, "completed": 0}, "stages": []}
        if session_id:
            answer = await self.pictures.breakdown(self._where(request, session_id))
        return web.json_response({"session": session_id, **answer})

    async def flow(self, request: web.Request) -> web.Response:
        session_id = await self._session(request, latest=False)
        where = self._where(request, session_id)
        window = await self._window(request, session_id, where, held=False)
        answer: dict[str, Any] = {"partitions": [], "agents": []}
        if window is not None:
            answer = await self.pictures.flow(where, *window)
        return web.json_response({"session": session_id, **answer})
