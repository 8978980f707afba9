"""Finding the processes a `pyarmonik local` cluster started, from /proc."""

from __future__ import annotations

from pathlib import Path


def _table() -> dict[int, tuple[int, list[bytes]]]:
    """pid -> (parent pid, command line)."""
    found: dict[int, tuple[int, list[bytes]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        found[int(entry.name)] = (parent, command)
    return found


def descendants(root: int) -> list[int]:
    """Every process below `root` (not `root` itself)."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def agent_pids(root: int) -> list[int]:
    """The `pyarmonik agent` processes started by the local cluster `root`."""
    return [
        pid for pid, (parent, command) in _table().items() if parent == root and b"agent" in command
    ]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
