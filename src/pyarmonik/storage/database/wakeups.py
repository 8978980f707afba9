"""Wake-ups between the processes that share one SQLite file (no server to notify them).

Every process that waits for changes binds a unix datagram socket of its own in a folder
beside the database file (`<db file>.wake/`, or a short folder under /tmp when that path is
too long for a socket address). After a committed write, the committing process sends one
byte to every other socket of the folder, without blocking: a full receive queue means its
owner is awake anyway, and a socket nobody reads any more (its process died) is removed. The
receiving side is a reader callback on the event loop, no thread. A lost datagram only
delays a waiter until its fallback timeout.

A process that is not waiting renames its socket aside (`.p`, `pause`) and back (`.s`,
`resume`): committers send only to waiters, so 64 busy agents no longer cost every commit 64
system calls. What was committed while a process did not listen, it learns on `resume` from
the database itself (SqliteDatabase compares SQLite's `data_version`).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import socket
import stat
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

log = logging.getLogger(__name__)

# sun_path holds 108 bytes, its terminating NUL included.
MAX_SOCKET_PATH = 107
SUFFIX = ".wake"
# A folder listing taken while the folder's mtime was this young may miss an entry added in
# the same timestamp tick (mtime does not change then): such a listing is taken again. The
# kernel stamps with its coarse clock, a tick behind at most (10 ms at HZ=100): twice that.
# A file system that keeps whole seconds only (its mtimes end in nine zeros) gets a second.
RACY_NS = 20_000_000
RACY_WHOLE_SECONDS_NS = 1_000_000_000
_now_ns = time.time_ns  # the wall clock mtimes are on (tests set it)
PROBE_PAUSED_EVERY = 10.0
# How long a socket name is: pid and a random part (unique across processes and instances).
_NAME_LENGTH = len(f"{2**22}-{'0' * 12}.s")


def wake_folder(database_path: str | Path) -> Path:
    """The folder of the wake-up sockets of a database file: beside it when a socket path in
    it fits in a unix socket address, else under /tmp, keyed by a hash of the file's path
    (every process computes the same, from the resolved path)."""
    path = Path(database_path).resolve()
    beside = path.with_name(path.name + SUFFIX)
    if len(os.fsencode(beside)) + 1 + _NAME_LENGTH <= MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:20]
    return Path("/tmp") / f"pyarmonik-{os.getuid()}-{digest}{SUFFIX}"


def _private_folder(folder: Path) -> None:
    """Create the folder (0700); refuse one that someone else could have planted."""
    with suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{folder} is not a folder of ours")


class Wakeups:
    """One process's side (one database instance's, in fact): `listen` to be woken through
    `on_wake`, `notify` the others after a commit."""

    def __init__(self, database_path: str | Path, on_wake: Callable[[], None]):
        self.folder = wake_folder(database_path)
        self._on_wake = on_wake
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}.s"
        self._paused_name = self.name[:-2] + ".p"  # the same length: fits as well
        self._paused = False
        self.received = 0  # datagrams read (tests look at it)
        self.removed = 0  # dead sockets removed
        self.disabled = False  # the folder cannot be used: waiters fall back to their timeout
        self._sender: socket.socket | None = None
        self._peers: list[str] = []
        self._paused_peers: list[str] = []
        self._probe_at = 0.0  # time.monotonic() when paused sockets are sent to again
        self._listed_mtime = -1  # mtime (ns) of the folder when listed; -1: list again

    @property
    def listening(self) -> bool:
        return self._socket is not None

    def listen(self) -> bool:
        """Bind our socket and read it from the running loop; whether we listen."""
        if self._socket is not None or self.disabled:
            return self._socket is not None
        path = self.folder / self.name
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            receiver.setblocking(False)
            for _ in range(3):  # the folder may be removed by a closing peer meanwhile
                _private_folder(self.folder)
                try:
                    receiver.bind(os.fspath(path))
                    break
                except FileNotFoundError:
                    continue
            else:
                raise FileNotFoundError(path)
        except OSError as error:
            receiver.close()
            self.disabled = True
            log.warning("no cross-process wake-ups for %s: %r", self.folder, error)
            return False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(receiver.fileno(), self._drain)
        self._socket = receiver
        return True

    def pause(self) -> None:
        """Stop reading wake-ups until `resume` (a busy process is not interrupted by them:
        they wait in the socket's queue, or are dropped once it is full)."""
        if self._socket is not None and self._loop is not None:
            self._loop.remove_reader(self._socket.fileno())
            if not self._paused:
                self._paused = True
                with suppress(OSError):
                    os.rename(self.folder / self.name, self.folder / self._paused_name)

    def resume(self) -> None:
        """Read wake-ups again, those that came meanwhile first."""
        if self._socket is not None and self._loop is not None:
            if self._paused:
                self._paused = False
                with suppress(OSError):
                    os.rename(self.folder / self._paused_name, self.folder / self.name)
            self._loop.add_reader(self._socket.fileno(), self._drain)
            self._drain()

    def _drain(self) -> None:
        assert self._socket is not None
        count = 0
        while True:
            try:
                self._socket.recv(16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # nothing else is expected; never let it spin the loop
                break
            count += 1
        if count:
            self.received += count
            self._on_wake()

    def notify(self) -> int:
        """Send one byte to every other listener of the folder, without blocking; how many
        were sent."""
        if self.disabled:
            return 0
        peers = self._listing()
        if self._paused_peers and time.monotonic() >= self._probe_at:
            # Now and then the paused sockets too: those of dead processes are removed.
            self._probe_at = time.monotonic() + PROBE_PAUSED_EVERY
            peers = peers + self._paused_peers
        if not peers:
            return 0
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        sent = 0
        for name in peers:
            path = os.fspath(self.folder / name)
            try:
                self._sender.sendto(b"!", path)
                sent += 1
            except (BlockingIOError, InterruptedError):
                pass  # its queue is full: it has wake-ups to read already
            except ConnectionRefusedError:  # nobody reads it: its process died
                with suppress(OSError):
                    os.unlink(path)
                self.removed += 1
                self._listed_mtime = -1
            except FileNotFoundError:  # its owner closed meanwhile
                self._listed_mtime = -1
            except OSError as error:  # e.g. another user's socket: not ours to judge
                if error.errno not in (errno.EACCES, errno.EPERM):
                    log.debug("wake-up of %s failed: %r", path, error)
        return sent

    def _listing(self) -> list[str]:
        """The other sockets of the folder, listed again only when the folder changed."""
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except OSError:  # nobody listens yet
            self._peers, self._paused_peers, self._listed_mtime = [], [], -1
            return self._peers
        if mtime != self._listed_mtime:
            listed_at = _now_ns()
            try:
                names = [entry.name for entry in os.scandir(self.folder)]
            except OSError:
                names = []
            self._peers = [name for name in names if name.endswith(".s") and name != self.name]
            self._paused_peers = [
                name for name in names if name.endswith(".p") and name != self._paused_name
            ]
            whole_seconds = mtime % 1_000_000_000 == 0
            racy = listed_at - mtime < (RACY_WHOLE_SECONDS_NS if whole_seconds else RACY_NS)
            self._listed_mtime = -1 if racy else mtime
        return self._peers

    def close(self) -> None:
        """Stop listening and remove our socket (and the folder when we were the last)."""
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._socket is None:
            return
        assert self._loop is not None
        with suppress(Exception):  # the loop may be closed already
            self._loop.remove_reader(self._socket.fileno())
        self._socket.close()
        self._socket = None
        for name in (self.name, self._paused_name):
            with suppress(OSError):
                os.unlink(self.folder / name)
        with suppress(OSError):  # not empty: others listen (a binder retries if it lost)
            self.folder.rmdir()
