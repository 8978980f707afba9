"""Backend adapters found through Python entry points, keyed by URL scheme.

A distribution installed beside pyarmonik adds an adapter by declaring an entry point in one
of three groups (pyarmonik's own adapters are declared the same way, in its pyproject.toml):

- `pyarmonik.databases`: `open(url: str) -> Database`
- `pyarmonik.queues`:    `open(url: str, database: Database, fair: bool) -> Queue`
- `pyarmonik.objects`:   `open(url: str) -> ObjectStorage`

The entry point's name is the URL scheme it serves (`sqs = "pyarmonik_sqs:open_queue"`); a
URL without a scheme (`table`) is looked up by itself. Entry points are read from installed
metadata at each lookup, so a distribution installed (or `pip install -e`'d) later is seen.
See docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal
from urllib.parse import urlsplit

from pyarmonik.domain.errors import InvalidArgument

Kind = Literal["database", "queue", "objects"]
GROUPS: dict[Kind, str] = {
    "database": "pyarmonik.databases",
    "queue": "pyarmonik.queues",
    "objects": "pyarmonik.objects",
}
LABELS: dict[Kind, str] = {"database": "database", "queue": "queue", "objects": "object storage"}


def scheme_of(url: str) -> str:
    """The lookup key of a backend URL: its scheme, or the whole URL when it has none."""
    return (urlsplit(url).scheme or url).lower()


def installed(kind: Kind) -> dict[str, list[EntryPoint]]:
    """The installed adapters of one kind: scheme -> the entry points declaring it."""
    found: dict[str, list[EntryPoint]] = {}
    for entry in entry_points(group=GROUPS[kind]):
        same = found.setdefault(entry.name.lower(), [])
        # An editable install can be seen twice on sys.path: the same target is one adapter.
        if all(other.value != entry.value for other in same):
            same.append(entry)
    return found


def adapter(kind: Kind, url: str) -> Callable[..., Any]:
    """The opener registered for `url`'s scheme; InvalidArgument naming the installed
    schemes when none is (the URL itself is not repeated: it may hold a password)."""
    scheme = scheme_of(url)
    adapters = installed(kind)
    entries = adapters.get(scheme)
    if not entries:
        schemes = ", ".join(sorted(adapters)) or "none (is pyarmonik installed? pip install -e .)"
        raise InvalidArgument(
            f"no {LABELS[kind]} adapter for URL scheme {scheme!r}; installed schemes: {schemes}"
        )
    if len(entries) > 1:
        targets = ", ".join(sorted(entry.value for entry in entries))
        raise InvalidArgument(
            f"{LABELS[kind]} URL scheme {scheme!r} is declared by several packages ({targets}):"
            " uninstall all but one"
        )
    opener = entries[0].load()
    if not callable(opener):
        raise InvalidArgument(f"{GROUPS[kind]} entry point {entries[0].value!r} is not callable")
    return opener  # type: ignore[no-any-return]
