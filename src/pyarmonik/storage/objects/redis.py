"""Redis object storage: a blob is a header hash plus one string key per CHUNK_SIZE piece.

Keys are `{prefix}{<id>}` (hash: size, chunks) and `{prefix}{<id>}:<n>`; the `{<id>}` hash tag
keeps a blob's keys on one Redis Cluster slot. Chunks are written with an expiry while the
upload runs; a Lua script then persists them all and writes the header in one atomic step.
Readers look at the header first, so a blob is whole or absent, and an upload that fails or
whose process dies leaves only expiring chunks behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pyarmonik.domain.errors import Unavailable
from pyarmonik.storage.objects import CHUNK_SIZE, ObjectNotFound, new_opaque_id
from pyarmonik.storage.objects.files import read_chunks, write_file
from pyarmonik.storage.urls import pop_query

# Idempotent (a retried call after a lost reply finds the header already there): persist every
# chunk, refusing if one expired meanwhile, then make the blob visible by writing its header.
COMMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
for i = 2, #KEYS do
    if redis.call('PERSIST', KEYS[i]) == 0 then return 0 end
end
redis.call('HSET', KEYS[1], 'size', ARGV[1], 'chunks', ARGV[2])
return 1
"""


class RedisStorage:
    """The ObjectStorage port on Redis; connection errors are retried with jittered backoff."""

    def __init__(self, url: str, prefix: str | None = None, *, upload_ttl: int = 24 * 3600) -> None:
        # `?prefix=TEXT` in the URL starts every key (deployments or tests sharing a server);
        # the `prefix` argument wins over it, "pyarmonik:" is the default.
        self.url, url_prefix = pop_query(url, "prefix")
        self.prefix = prefix or url_prefix or "pyarmonik:"
        self.upload_ttl = upload_ttl
        self._client: aioredis.Redis | None = None
        self._commit: AsyncScript | None = None

    @property
    def _where(self) -> str:
        parts = urlsplit(self.url)
        return f"Redis at {parts.hostname or 'localhost'}:{parts.port or 6379}"

    async def start(self) -> None:
        # Probe once without retries, so that a wrong address fails fast and clearly.
        probe = aioredis.Redis.from_url(
            self.url, retry=Retry(NoBackoff(), retries=0), socket_connect_timeout=5
        )
        try:
            await probe.ping()
        except (RedisError, OSError) as exc:
            # The exception text may quote the URL: name the host only, never the password.
            raise Unavailable(f"{self._where} is unreachable ({type(exc).__name__})") from None
        finally:
            await probe.aclose()
        client = aioredis.Redis.from_url(
            self.url,
            # From now on a restarting Redis is waited for (about 10 s in all), not an error.
            retry=Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.1), retries=8),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        self._client = client
        self._commit = client.register_script(COMMIT)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def check_health(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"{self._where} is unreachable ({type(exc).__name__})") from None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise Unavailable(f"{self._where}: storage not started")
        return self._client

    def _header(self, opaque_id: bytes | str) -> str:
        name = opaque_id.decode("ascii", "replace") if isinstance(opaque_id, bytes) else opaque_id
        return f"{self.prefix}{{{name}}}"

    async def put_file(self, path: Path, owner: str = "") -> tuple[bytes, int]:
        return await self.put(read_chunks(path), owner)

    async def get_file(self, opaque_id: bytes, path: Path) -> None:
        await write_file(path, self.get(opaque_id))

    async def put(self, chunks: AsyncIterable[bytes], owner: str = "") -> tuple[bytes, int]:
        opaque_id = new_opaque_id(owner)
        header = self._header(opaque_id)
        written: list[str] = []
        pending = bytearray()
        size = 0

        async def flush(piece: bytes) -> None:
            key = f"{header}:{len(written)}"
            written.append(key)
            await self.client.set(key, piece, ex=self.upload_ttl)

        try:
            async for chunk in chunks:
                size += len(chunk)
                pending += chunk
                while len(pending) >= CHUNK_SIZE:
                    await flush(bytes(pending[:CHUNK_SIZE]))
                    del pending[:CHUNK_SIZE]
            if pending:
                await flush(bytes(pending))
            assert self._commit is not None
            if not await self._commit(keys=[header, *written], args=[size, len(written)]):
                raise Unavailable(f"upload to {self._where} outlived its {self.upload_ttl} s")
        except BaseException:
            # Best effort: what is not deleted here expires on its own.
            with contextlib.suppress(Exception):
                if written:
                    await self.client.delete(*written)
            raise
        return opaque_id.encode(), size

    async def get(self, opaque_id: bytes) -> AsyncIterator[bytes]:
        header = self._header(opaque_id)
        count = await self.client.hget(header, "chunks")
        if count is None:
            raise ObjectNotFound(f"object {opaque_id.decode(errors='replace')} not found")
        for n in range(int(count)):
            chunk = await self.client.get(f"{header}:{n}")
            if chunk is None:  # deleted while we were reading it
                raise ObjectNotFound(f"object {opaque_id.decode(errors='replace')} was deleted")
            yield cast(bytes, chunk)  # decode_responses is off: values are bytes

    async def delete(self, opaque_ids: list[bytes]) -> None:
        if not opaque_ids:
            return
        headers = [self._header(opaque_id) for opaque_id in opaque_ids]
        async with self.client.pipeline(transaction=False) as pipe:
            for header in headers:
                pipe.hget(header, "chunks")
            counts = await pipe.execute()
            for header, count in zip(headers, counts, strict=True):
                if count is not None:
                    # One DEL per blob, header included: it vanishes whole.
                    pipe.delete(header, *(f"{header}:{n}" for n in range(int(count))))
            await pipe.execute()

    async def delete_owned_by(self, owner: str) -> int:
        # Every key of a blob (its header, then "<header>:<n>" per chunk) starts with the
        # header's opening, glob characters escaped for MATCH.
        opening = self._header(f"{owner}.")[:-1]
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in opening) + "*"
        blobs = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            blobs += key.endswith(b"}")  # a header, one per blob
            if len(batch) >= 1000:
                await self.client.delete(*batch)
                batch.clear()
        if batch:
            await self.client.delete(*batch)
        return blobs

    async def sizes(self, opaque_ids: list[bytes]) -> list[int | None]:
        if not opaque_ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for opaque_id in opaque_ids:
                pipe.hget(self._header(opaque_id), "size")
            found = await pipe.execute()
        return [None if size is None else int(size) for size in found]
