"""Backends as plugins: adapters are found through entry points, by URL scheme."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.storage.factory import open_database, open_objects, open_queue
from pyarmonik.storage.plugins import installed, scheme_of

pytestmark = pytest.mark.timeout(120)


def install_by_hand(site: Path, name: str, module: str, entry_points: str) -> None:
    """What pip leaves in site-packages for a distribution: its module and its dist-info
    (METADATA, entry_points.txt, RECORD). Written directly: building a wheel needs `wheel`
    or an index, and what pyarmonik reads is this metadata either way."""
    (site / f"{name}.py").write_text(textwrap.dedent(module))
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    (info / "RECORD").write_text(f"{name}.py,,\n{info.name}/METADATA,,\n")


def test_schemes_and_builtins_are_entry_points() -> None:
    assert scheme_of("table") == "table"
    assert scheme_of("AMQP://h/") == "amqp"
    assert scheme_of("sqlite:///tmp/x.db") == "sqlite"
    assert {"sqlite", "postgres", "postgresql"} <= set(installed("database"))
    assert {"table", "amqp", "amqps"} <= set(installed("queue"))
    assert {"file", "redis", "rediss", "s3"} <= set(installed("objects"))
    for kind in ("database", "queue", "objects"):
        for scheme, entries in installed(kind).items():
            if scheme not in ("nats", "sqs"):  # the plugins of plugins/
                assert [e.value.split(":")[0] for e in entries] == ["pyarmonik.storage.builtin"]


def test_an_unknown_scheme_names_the_installed_ones() -> None:
    with pytest.raises(InvalidArgument) as caught:
        open_queue("kafka://user:s3cret@host:9092", database=None)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "'kafka'" in message and "amqp" in message and "table" in message
    assert "s3cret" not in message
    with pytest.raises(InvalidArgument, match=r"installed schemes: .*sqlite"):
        open_database("mysql://host/db")
    with pytest.raises(InvalidArgument, match=r"installed schemes: .*s3"):
        open_objects("gs://bucket")


def test_a_scheme_declared_twice_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_by_hand(
        tmp_path,
        "shadow_table",
        "def open_queue(url, database, fair):\n    return None\n",
        "[pyarmonik.queues]\ntable = shadow_table:open_queue\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InvalidArgument, match="declared by several packages"):
        open_queue("table", database=None)  # type: ignore[arg-type]


def test_a_plugin_installed_in_a_fresh_venv_is_picked_up_by_scheme(tmp_path: Path) -> None:
    """A fresh virtual environment that sees pyarmonik (its site-packages chained by a .pth,
    as `--system-site-packages` would): `memq://` is unknown until a distribution declaring
    it is installed there, then it opens through that distribution's entry point."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    ours = sysconfig.get_paths()["purelib"]
    (site / "pyarmonik-env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    probe = textwrap.dedent(
        """
        from pyarmonik.domain.errors import InvalidArgument
        from pyarmonik.storage.database.sqlite import SqliteDatabase
        from pyarmonik.storage.factory import open_database, open_queue
        try:
            queue = open_queue("memq://broker/?x=1", SqliteDatabase(":memory:"), fair=False)
            print("opened", type(queue).__module__, queue.url, queue.fair)
        except InvalidArgument as error:
            print("refused", error)
        """
    )

    def run() -> str:
        done = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run().startswith("refused no queue adapter for URL scheme 'memq'")
    install_by_hand(
        site,
        "pyarmonik_memq",
        """
        class MemoryQueue:
            def __init__(self, url, fair):
                self.url, self.fair = url, fair

        def open_queue(url, database, fair):
            return MemoryQueue(url, fair)
        """,
        "[pyarmonik.queues]\nmemq = pyarmonik_memq:open_queue\n",
    )
    assert run() == "opened pyarmonik_memq memq://broker/?x=1 False"
