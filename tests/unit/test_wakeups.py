"""Wake-ups between processes sharing a SQLite file (storage/database/wakeups.py)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from pyarmonik.storage.database import wakeups
from pyarmonik.storage.database.wakeups import MAX_SOCKET_PATH, Wakeups, wake_folder

pytestmark = pytest.mark.timeout(60)


class Counter:
    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        self.woken.set()


def long_path(base: Path) -> Path:
    """A database path whose wake folder beside it could not hold a socket address."""
    folder = base / ("x" * 60) / ("y" * 60)
    folder.mkdir(parents=True)
    return folder / "pyarmonik.db"


def test_folder_is_beside_the_database_when_short(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    assert wake_folder(database) == tmp_path / "db.sqlite.wake"


def test_folder_is_a_short_one_under_tmp_when_the_path_is_long(tmp_path: Path) -> None:
    database = long_path(tmp_path)
    folder = wake_folder(database)
    assert folder.parent == Path("/tmp")
    assert folder == wake_folder(database)  # every process finds the same one
    assert folder != wake_folder(database.with_name("other.db"))
    # Relative and absolute spellings of one file agree.
    relative = os.path.relpath(database)
    assert wake_folder(relative) == folder
    assert len(os.fsencode(folder / Wakeups(database, lambda: None).name)) <= MAX_SOCKET_PATH


async def test_a_notification_wakes_the_other_listeners_only(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    first, second = Counter(), Counter()
    a, b = Wakeups(database, first), Wakeups(database, second)
    try:
        assert a.listen() and b.listen()
        assert a.notify() == 1  # b only: a's own writes wake a without a datagram
        await asyncio.wait_for(second.woken.wait(), 30)
        assert b.received == 1
        await asyncio.sleep(0.05)
        assert first.count == 0 and a.received == 0
        assert b.notify() == 1
        await asyncio.wait_for(first.woken.wait(), 30)
        assert a.received == 1
    finally:
        a.close()
        b.close()
    assert not wake_folder(database).exists()  # the last one out removes the folder


async def test_a_sender_that_does_not_listen_wakes_the_listeners(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    woken = Counter()
    sender, listener = Wakeups(database, lambda: None), Wakeups(database, woken)
    try:
        assert sender.notify() == 0  # nobody listens yet, and no folder: nothing happens
        assert listener.listen()
        assert sender.notify() == 1  # the folder just appeared: listed again
        await asyncio.wait_for(woken.woken.wait(), 30)
    finally:
        sender.close()
        listener.close()


async def test_a_listener_that_joins_right_after_a_listing_is_notified(tmp_path: Path) -> None:
    # A folder's mtime does not change when an entry is added within the same timestamp
    # tick: a listing taken while the folder was that young is not trusted.
    database = tmp_path / "db.sqlite"
    sender = Wakeups(database, lambda: None)
    first, second = Wakeups(database, Counter()), Wakeups(database, Counter())
    try:
        assert first.listen()
        assert sender.notify() == 1
        folder = wake_folder(database)
        listed = folder.stat().st_mtime_ns
        assert second.listen()
        os.utime(folder, ns=(listed, listed))  # as if `second` joined in the same tick
        assert sender.notify() == 2
    finally:
        for wakeups in (sender, first, second):
            wakeups.close()


@pytest.mark.parametrize(
    ("mtime_ns", "listed_at_ns", "trusted"),
    [
        (1_700_000_000_123_456_789, 1_700_000_000_173_456_789, True),  # 50 ms: past its tick
        (1_700_000_000_123_456_789, 1_700_000_000_128_456_789, False),  # 5 ms: maybe within
        (1_700_000_000_000_000_000, 1_700_000_000_500_000_000, False),  # whole seconds only
        (1_700_000_000_000_000_000, 1_700_000_001_500_000_000, True),
    ],
)
async def test_a_listing_is_trusted_once_the_folder_is_a_tick_old(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mtime_ns: int,
    listed_at_ns: int,
    trusted: bool,
) -> None:
    """An entry added in the same timestamp tick as the listing leaves the mtime as it was:
    a listing that young is taken again. Agents rename their socket at every pause and
    resume: with a one-second window, every commit listed the folder again (4% of an
    agent's CPU in `bench indep`); the window is now two clock ticks, or a second on a file
    system that keeps whole seconds."""
    monkeypatch.setattr(wakeups, "_now_ns", lambda: listed_at_ns)
    database = tmp_path / "db.sqlite"
    sender, listener = Wakeups(database, lambda: None), Wakeups(database, Counter())
    try:
        assert listener.listen()
        folder = wake_folder(database)
        os.utime(folder, ns=(mtime_ns, mtime_ns))
        assert sender.notify() == 1
        planted = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        planted.bind(os.fspath(folder / "4244-plantedplant.s"))
        os.utime(folder, ns=(mtime_ns, mtime_ns))  # as if planted within the same tick
        try:
            assert sender.notify() == (1 if trusted else 2)
        finally:
            planted.close()
    finally:
        sender.close()
        listener.close()


async def test_an_old_listing_is_reused_until_the_folder_changes(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    sender, listener = Wakeups(database, lambda: None), Wakeups(database, Counter())
    try:
        assert listener.listen()
        folder = wake_folder(database)
        old = folder.stat().st_mtime_ns - 10**10
        os.utime(folder, ns=(old, old))
        assert sender.notify() == 1
        # A socket planted without touching the mtime is not seen: the listing is cached ...
        planted = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        planted.bind(os.fspath(folder / "4244-plantedplant.s"))
        os.utime(folder, ns=(old, old))
        try:
            assert sender.notify() == 1
            # ... until the folder changes.
            os.utime(folder, ns=(old + 1, old + 1))
            assert sender.notify() == 2
        finally:
            planted.close()
    finally:
        sender.close()
        listener.close()


async def test_sockets_of_dead_processes_are_removed(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    woken = Counter()
    live, sender = Wakeups(database, woken), Wakeups(database, lambda: None)
    try:
        assert live.listen()
        # A process killed while listening leaves its socket file behind, bound to nothing.
        dead = wake_folder(database) / "4242-deaddeaddead.s"
        orphan = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        orphan.bind(os.fspath(dead))
        orphan.close()
        assert dead.exists()
        assert sender.notify() == 1
        assert sender.removed == 1
        assert not dead.exists()
        await asyncio.wait_for(woken.woken.wait(), 30)
        assert sender.notify() == 1  # and it is gone from the listing
        assert sender.removed == 1
    finally:
        live.close()
        sender.close()


async def test_a_full_receive_queue_is_not_an_error(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    sender = Wakeups(database, lambda: None)
    folder = wake_folder(database)
    folder.mkdir(mode=0o700)
    sleeper = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # a listener that never reads
    sleeper.bind(os.fspath(folder / "4243-sleepingsleep.s"))
    try:
        sent = [sender.notify() for _ in range(500)]
        assert sent[0] == 1
        assert 0 in sent  # its queue filled up, and notify neither blocked nor failed
        assert sender.removed == 0
        assert (folder / "4243-sleepingsleep.s").exists()
    finally:
        sleeper.close()
        sender.close()


async def test_wakeups_work_when_the_path_is_long(tmp_path: Path) -> None:
    database = long_path(tmp_path)
    assert len(os.fsencode(database.with_name("pyarmonik.db.wake"))) > MAX_SOCKET_PATH
    woken = Counter()
    a, b = Wakeups(database, lambda: None), Wakeups(database, woken)
    try:
        assert b.listen()
        assert a.notify() == 1
        await asyncio.wait_for(woken.woken.wait(), 30)
    finally:
        a.close()
        b.close()
    assert not b.folder.exists()


async def test_an_unusable_folder_disables_wakeups_without_failing(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    wake_folder(database).write_text("not a folder")
    wakeups = Wakeups(database, lambda: None)
    assert not wakeups.listen()
    assert wakeups.disabled and not wakeups.listening
    assert wakeups.notify() == 0
    wakeups.close()


async def test_close_removes_the_socket_and_stops_reading(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    other = Wakeups(database, Counter())
    wakeups = Wakeups(database, Counter())
    try:
        assert other.listen() and wakeups.listen()
        path = wakeups.folder / wakeups.name
        assert path.exists()
        wakeups.close()
        assert not path.exists()
        assert wake_folder(database).exists()  # `other` still listens in it
        assert Wakeups(database, lambda: None).notify() == 1
    finally:
        other.close()
