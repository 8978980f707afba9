"""The PostgreSQL adapter over TLS: the local server is given a certificate this test makes
(`ALTER SYSTEM`, reverted at the end), and the database URL verifies it (`sslmode=verify-full`
with the test's CA). Plain connections keep working meanwhile: `ssl = on` only allows TLS."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from pyarmonik.certificates import issue_server_certificate, make_ca
from pyarmonik.domain.errors import Unavailable
from pyarmonik.domain.records import Partition
from pyarmonik.storage.factory import open_database
from tests.helpers import POSTGRES_URL, require_server

pytestmark = [pytest.mark.cluster, pytest.mark.backend("postgres")]


async def _reload(connection: asyncpg.Connection, settings: dict[str, str | None]) -> None:
    for name, value in settings.items():
        if value is None:
            await connection.execute(f"ALTER SYSTEM RESET {name}")
        else:
            await connection.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    await connection.execute("SELECT pg_reload_conf()")


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[Path]:
    """The local PostgreSQL serving TLS with a certificate of our CA; yields the CA file."""
    require_server("PostgreSQL", POSTGRES_URL, 5432)
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        pytest.skip("needs the machine's own PostgreSQL server, as root (to hand it the key)")
    ca_cert, ca_key = make_ca("postgres test CA", 1)
    cert, key = issue_server_certificate(ca_cert, ca_key, ["127.0.0.1", "localhost"], 1)
    folder = Path("/tmp") / f"pyarmonik-pg-tls-{uuid.uuid4().hex[:8]}"
    folder.mkdir(mode=0o700)
    (folder / "server.crt").write_bytes(cert)
    (folder / "server.key").write_bytes(key)
    (tmp_path / "ca.crt").write_bytes(ca_cert)
    postgres = shutil.chown  # the server reads them as its own user; the key must be private
    for path in (folder, folder / "server.crt", folder / "server.key"):
        postgres(path, "postgres", "postgres")
    (folder / "server.key").chmod(0o600)
    admin = await asyncpg.connect(POSTGRES_URL, timeout=10)
    try:
        await _reload(
            admin,
            {
                "ssl_cert_file": str(folder / "server.crt"),
                "ssl_key_file": str(folder / "server.key"),
                "ssl": "on",
            },
        )
        yield tmp_path / "ca.crt"
    finally:
        await _reload(admin, {"ssl": None, "ssl_cert_file": None, "ssl_key_file": None})
        await admin.close()
        shutil.rmtree(folder, ignore_errors=True)


async def test_the_database_url_verifies_the_server_certificate(tls_server: Path) -> None:
    schema = f"tls_{uuid.uuid4().hex[:12]}"
    url = f"{POSTGRES_URL}?sslmode=verify-full&sslrootcert={tls_server}&schema={schema}"
    database = open_database(url)
    await database.start()
    try:
        async with database.write() as repository:
            await repository.insert([Partition(partition_id="tls")])
        async with database.read() as repository:
            assert (await repository.get(Partition, "tls")) is not None
            rows = await repository.connection.fetch(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", []
            )
            assert rows[0]["ssl"] is True
    finally:
        await database.close()
        admin = await asyncpg.connect(POSTGRES_URL, timeout=10)
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
    # A server certificate the client cannot verify is refused.
    other_ca = tls_server.parent / "other.crt"
    other_ca.write_bytes(make_ca("another CA", 1)[0])
    refused = open_database(f"{POSTGRES_URL}?sslmode=verify-full&sslrootcert={other_ca}")
    with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await refused.start()
