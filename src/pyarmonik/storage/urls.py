"""Small helpers for backend URLs."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def pop_query(url: str, key: str) -> tuple[str, str | None]:
    """`url` without its `key` query parameter, and that parameter's (last) value.

    For our own options (`?prefix=...`) that the client library must not see: redis-py
    rejects unknown parameters, and aio-pika would pass them on to the connection."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [value for name, value in query if name == key]
    if not values:
        return url, None
    rest = urlencode([(name, value) for name, value in query if name != key])
    return urlunsplit(parts._replace(query=rest)), values[-1]
