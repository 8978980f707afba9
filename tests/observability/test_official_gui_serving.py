"""How the HTTP port serves a build of ArmoniK's Admin GUI (`--official-gui DIR`), on a stand-in
build: its files with their types, its routes falling back to its page as ArmoniK's nginx does,
the two files it asks its web server for, and nothing readable outside the build."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyarmonik.control.gui.official import OfficialGui
from pyarmonik.domain.errors import InvalidArgument
from tests.helpers import control_plane, free_port

SECRET = b"not part of the build"


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for dist/admin/browser, a secret beside it and a symlink out of it."""
    root = tmp_path_factory.mktemp("gui")
    (root / "secret.txt").write_bytes(SECRET)
    browser = root / "dist" / "admin" / "browser"
    for lang in ("en", "fr"):
        (browser / lang / "assets").mkdir(parents=True)
        (browser / lang / "index.html").write_text(f'<html lang="{lang}"></html>')
        (browser / lang / "main-ABC123.js").write_text("export const x = 1;")
        (browser / lang / "styles-DEF456.css").write_text("body {}")
        (browser / lang / "assets" / "logo.svg").write_text("<svg/>")
    (browser / "en" / "leak.txt").symlink_to(root / "secret.txt")
    return browser


@pytest.fixture(scope="module")
def base(build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    http_port = free_port()
    with control_plane(
        tmp_path_factory.mktemp("plane"), http_port=http_port, official_gui_dir=build
    ):
        yield f"127.0.0.1:{http_port}"


def get(base: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET `path` as written (http.client leaves `..` and `%2e` alone), no redirect followed."""
    connection = http.client.HTTPConnection(base, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_files_of_the_build_with_their_types(base: str) -> None:
    for path, content_type in (
        ("/admin/en/main-ABC123.js", "text/javascript"),
        ("/admin/fr/styles-DEF456.css", "text/css"),
        ("/admin/en/assets/logo.svg", "image/svg+xml"),
        ("/admin/en/index.html", "text/html"),
    ):
        status, headers, _ = get(base, path)
        assert status == 200, path
        assert headers["Content-Type"].split(";")[0] == content_type, path


def test_routes_of_the_gui_get_its_page(base: str) -> None:
    for path, lang in (
        ("/admin/en/", "en"),
        ("/admin/en/sessions", "en"),
        ("/admin/en/tasks/1d2e3f", "en"),
        ("/admin/fr/results?0-root-1-0=x", "fr"),
    ):
        status, headers, body = get(base, path)
        assert status == 200, path
        assert f'lang="{lang}"'.encode() in body, path
        assert headers["Cache-Control"] == "no-cache"  # it names the build's current bundles


def test_admin_redirects_to_english(base: str) -> None:
    for path, target in (
        ("/admin", "/admin/en/"),
        ("/admin/", "/admin/en/"),
        ("/admin/fr", "/admin/fr/"),
    ):
        status, headers, _ = get(base, path)
        assert (status, headers["Location"]) == (302, target), path
    assert get(base, "/admin/de/")[0] == 404


def test_what_the_gui_asks_its_web_server(base: str) -> None:
    status, _, body = get(base, "/static/environment.json")
    assert status == 200 and json.loads(body)["name"] == "pyarmonik"
    status, _, body = get(base, "/static/gui_configuration")
    assert status == 200 and json.loads(body) == {}  # no settings to import: its defaults
    # Our own GUI is still there.
    assert get(base, "/")[0] == 200
    assert get(base, "/static/app.js")[0] == 200


@pytest.mark.parametrize(
    "path",
    [
        "/admin/en/../../../../secret.txt",
        "/admin/en/%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/admin/en/..%2f..%2f..%2f..%2fsecret.txt",
        "/admin/en/leak.txt",  # a symlink out of the build
        "/admin/en//etc/passwd",
        "/admin/en/%00",
    ],
)
def test_nothing_outside_the_build_is_readable(base: str, path: str) -> None:
    status, _, body = get(base, path)
    assert SECRET not in body and b"root:" not in body, path
    assert status in (200, 400, 404), path
    if status == 200:
        assert body.startswith(b"<html"), path  # the GUI's page, not a file


def test_a_folder_that_is_no_build_is_refused(build: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=re.escape("no en/index.html, fr/index.html")):
        OfficialGui(tmp_path)
    # `pyarmonik control --official-gui` fails its start, naming the folder.
    run = subprocess.run(
        [sys.executable, "-m", "pyarmonik.cli.main", "control", "--port", str(free_port()),
         "--http-port", str(free_port()), "--data-dir", str(tmp_path / "data"),
         "--official-gui", str(build.parent)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert f"{build.parent}: not a build of ArmoniK's Admin GUI" in run.stderr
