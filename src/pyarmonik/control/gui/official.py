"""ArmoniK's own Admin GUI (aneoconsulting/ArmoniK.Admin.GUI), built by its npm build
(scripts/official-gui.sh), served from the HTTP port at /admin/en/ and /admin/fr/ as ArmoniK's
nginx serves it: a file of the build when the path names one, else the language's
index.html (the GUI's own routes). It calls gRPC-Web on this same origin (control/grpcweb.py).

Only the files found in the build's en/ and fr/ folders when the server starts are served,
from a table made then: no path a caller sends reaches the file system, and a file (or
symlink) that resolves outside the build is left out. The GUI also asks its web server for
`/static/environment.json` (the name shown in its toolbar) and `/static/gui_configuration`
(settings to import, none here); both are answered here.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path

from aiohttp import web

import pyarmonik
from pyarmonik.domain.errors import InvalidArgument

LANGUAGES = ("en", "fr")
# Browsers refuse module scripts served with another type; mimetypes depends on the host.
TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".png": "image/png",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".txt": "text/plain",
}
ENVIRONMENT = {
    "name": "pyarmonik",
    "version": pyarmonik.__version__,
    "description": "pyarmonik, ArmoniK's API v3 in Python",
    "color": "#2e7d32",  # the GUI draws the name in red without one
}


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    return TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def scan(directory: Path) -> dict[str, dict[str, Path]]:
    """The build's files by language and path relative to the language's folder."""
    root = directory.resolve()
    missing = [
        f"{lang}/index.html" for lang in LANGUAGES if not (root / lang / "index.html").is_file()
    ]
    if missing:
        raise InvalidArgument(
            f"{directory}: not a build of ArmoniK's Admin GUI (no {', '.join(missing)}; give its"
            " dist/admin/browser folder, see scripts/official-gui.sh)"
        )
    files: dict[str, dict[str, Path]] = {}
    for lang in LANGUAGES:
        base = root / lang
        found: dict[str, Path] = {}
        for folder, _, names in os.walk(base):
            for name in names:
                path = Path(folder, name)
                real = path.resolve()
                if real.is_relative_to(base) and real.is_file():
                    found[path.relative_to(base).as_posix()] = real
        files[lang] = found
    return files


class OfficialGui:
    """The routes of ArmoniK's Admin GUI build in `directory` (its dist/admin/browser)."""

    def __init__(self, directory: Path):
        # Read now: a wrong folder fails the start with the folder named.
        self.files = scan(directory)

    def install(self, app: web.Application) -> None:
        """Before the admin GUI's routes: its `/static/{name}` would take the two below."""
        router = app.router
        router.add_get("/static/environment.json", self.environment)
        router.add_get("/static/gui_configuration", self.configuration)
        router.add_get("/admin", self.to_default)
        router.add_get("/admin/", self.to_default)
        for lang in LANGUAGES:
            router.add_get(f"/admin/{lang}", self.to_default)
            router.add_get(f"/admin/{lang}/{{path:.*}}", self.file)

    async def to_default(self, request: web.Request) -> web.Response:
        lang = request.path.removeprefix("/admin").strip("/") or LANGUAGES[0]
        raise web.HTTPFound(f"/admin/{lang}/")

    async def file(self, request: web.Request) -> web.FileResponse:
        lang = request.path.split("/")[2]
        files = self.files[lang]
        path = files.get(request.match_info["path"])
        if path is None:  # one of the GUI's routes (or nothing): its page, as nginx does
            path = files["index.html"]
        headers = {"Content-Type": _content_type(path)}
        if path.name == "index.html":  # it names the hashed bundles of the current build
            headers["Cache-Control"] = "no-cache"
        return web.FileResponse(path, headers=headers)

    async def environment(self, request: web.Request) -> web.Response:
        return web.json_response(ENVIRONMENT)

    async def configuration(self, request: web.Request) -> web.Response:
        return web.json_response({})
