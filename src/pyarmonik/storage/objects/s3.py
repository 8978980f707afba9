"""S3-compatible object storage (AWS S3, MinIO, ...) with aiobotocore: one object per blob.

URL: `s3://[access_key:secret_key@]bucket[/key/prefix]?endpoint=http://host:9000&region=us-east-1`
(credentials otherwise come from the standard AWS environment variables or config files).
Small blobs are one PutObject; larger ones a multipart upload streamed part by part, aborted
on failure. S3 shows an object only once PutObject/CompleteMultipartUpload succeeded, so a
blob is whole or absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from pyarmonik.domain.errors import Unavailable
from pyarmonik.storage.objects import CHUNK_SIZE, ObjectNotFound, new_opaque_id
from pyarmonik.storage.objects.files import read_chunks, write_file

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# S3 requires every part but the last to be at least 5 MiB.
MIN_PART_SIZE = 5 * 1024 * 1024
MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class S3Storage:
    """The ObjectStorage port on an S3-compatible store; the bucket is created if missing."""

    def __init__(self, url: str, *, part_size: int = 8 * 1024 * 1024, concurrency: int = 16):
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.hostname:
            raise ValueError("expected s3://[key:secret@]bucket[/prefix]?endpoint=...&region=...")
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        self.bucket = parts.hostname
        self.key_prefix = parts.path.lstrip("/")
        if self.key_prefix and not self.key_prefix.endswith("/"):
            self.key_prefix += "/"
        self.endpoint = query.get("endpoint")
        self.region = query.get("region") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self._access_key = unquote(parts.username) if parts.username else None
        self._secret_key = unquote(parts.password) if parts.password else None
        self.part_size = max(part_size, MIN_PART_SIZE)
        self._limit = asyncio.Semaphore(concurrency)
        self._stack: AsyncExitStack | None = None
        self._client: S3Client | None = None

    @property
    def _where(self) -> str:
        return f"S3 bucket {self.bucket} at {self.endpoint or 'AWS ' + self.region}"

    def _connect(self, attempts: int) -> AbstractAsyncContextManager[S3Client]:
        config = AioConfig(
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=5,
            # MinIO and most self-hosted stores want path-style addressing.
            s3={"addressing_style": "path" if self.endpoint else "auto"},
        )
        return get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            config=config,
        )

    async def start(self) -> None:
        try:
            # Without retries, so that a wrong address or credentials fail fast and clearly.
            async with self._connect(attempts=1) as probe:
                await self._ensure_bucket(probe)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise Unavailable(f"{self._where} is unavailable ({type(exc).__name__})") from None
        # From now on, transient errors (a restarting server, throttling) are retried.
        stack = AsyncExitStack()
        self._client = await stack.enter_async_context(self._connect(attempts=5))
        self._stack = stack

    async def _ensure_bucket(self, client: S3Client) -> None:
        try:
            await client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in MISSING:
                raise
        try:
            if self.region == "us-east-1":
                await client.create_bucket(Bucket=self.bucket)
            else:
                await client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": self.region},  # type: ignore[typeddict-item]
                )
        except ClientError as exc:
            # Another process created it meanwhile.
            if _code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = None

    async def check_health(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise Unavailable(f"{self._where} is unavailable ({type(exc).__name__})") from None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise Unavailable(f"{self._where}: storage not started")
        return self._client

    def _key(self, opaque_id: bytes) -> str:
        return self.key_prefix + opaque_id.decode("ascii", "replace")

    async def put_file(self, path: Path, owner: str = "") -> tuple[bytes, int]:
        return await self.put(read_chunks(path), owner)

    async def get_file(self, opaque_id: bytes, path: Path) -> None:
        await write_file(path, self.get(opaque_id))

    async def put(self, chunks: AsyncIterable[bytes], owner: str = "") -> tuple[bytes, int]:
        opaque_id = new_opaque_id(owner).encode()
        key = self._key(opaque_id)
        pending = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        async def upload_part(data: bytes) -> None:
            nonlocal upload_id
            if upload_id is None:
                created = await self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
                upload_id = created["UploadId"]
            number = len(parts) + 1
            uploaded = await self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
            parts.append({"PartNumber": number, "ETag": uploaded["ETag"]})

        try:
            async for chunk in chunks:
                size += len(chunk)
                pending += chunk
                while len(pending) >= self.part_size:
                    await upload_part(bytes(pending[: self.part_size]))
                    del pending[: self.part_size]
            if upload_id is None:
                await self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(pending))
            else:
                if pending:
                    await upload_part(bytes(pending))
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                )
        except BaseException:
            if upload_id is not None:
                # Best effort; a bucket lifecycle rule can reap uploads a crash left behind.
                with contextlib.suppress(Exception):
                    await self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
            raise
        return opaque_id, size

    async def get(self, opaque_id: bytes) -> AsyncIterator[bytes]:
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=self._key(opaque_id))
        except ClientError as exc:
            if _code(exc) in MISSING:
                raise ObjectNotFound(
                    f"object {opaque_id.decode(errors='replace')} not found"
                ) from None
            raise
        body = response["Body"]
        try:
            # The HTTP stream comes in small reads: regroup them into CHUNK_SIZE pieces.
            pending = bytearray()
            while data := await body.read(CHUNK_SIZE):
                pending += data
                if len(pending) >= CHUNK_SIZE:
                    yield bytes(pending[:CHUNK_SIZE])
                    del pending[:CHUNK_SIZE]
            if pending:
                yield bytes(pending)
        finally:
            body.close()

    async def delete(self, opaque_ids: list[bytes]) -> None:
        keys = [self._key(opaque_id) for opaque_id in opaque_ids]
        # DeleteObjects takes up to 1000 keys and ignores absent ones.
        for start in range(0, len(keys), 1000):
            objects = [{"Key": key} for key in keys[start : start + 1000]]
            await self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": objects, "Quiet": True},  # type: ignore[typeddict-item]
            )

    async def delete_owned_by(self, owner: str) -> int:
        prefix = self._key(f"{owner}.".encode())
        keys: list[bytes] = []
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [
                item["Key"][len(self.key_prefix) :].encode() for item in page.get("Contents", [])
            ]
        await self.delete(keys)
        return len(keys)

    async def sizes(self, opaque_ids: list[bytes]) -> list[int | None]:
        async def size(opaque_id: bytes) -> int | None:
            async with self._limit:
                try:
                    head = await self.client.head_object(
                        Bucket=self.bucket, Key=self._key(opaque_id)
                    )
                except ClientError as exc:
                    if _code(exc) in MISSING:
                        return None
                    raise
            return int(head["ContentLength"])

        return list(await asyncio.gather(*(size(opaque_id) for opaque_id in opaque_ids)))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
