"""The authentication tables and AuthStore (reference armonik-auth.md §3, §6), on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from pyarmonik.domain.auth import (
    MONITORING_PERMISSIONS,
    PERMISSIONS,
    Certificate,
    CertificateSpec,
    Identity,
    Provisioning,
    Role,
    RoleSpec,
    User,
    UserSpec,
)
from pyarmonik.domain.errors import InvalidArgument, NotFound
from pyarmonik.scheduling.auth import AuthStore, token_hash
from pyarmonik.scheduling.backends import Backends
from pyarmonik.storage.database import Database
from pyarmonik.storage.database.postgres import PostgresDatabase
from pyarmonik.storage.objects.files import FileStorage
from pyarmonik.storage.queue.table import TableQueue
from tests.backends.conftest import Backend, postgres_schema


@pytest.fixture
def store(database: Database, tmp_path: Path) -> AuthStore:
    return AuthStore(Backends(database, TableQueue(database), FileStorage(tmp_path / "objects")))


async def seed(database: Database) -> None:
    """The data of ArmoniK's AuthenticationTableTestBase, ids as there."""
    async with database.write() as repository:
        for role in (
            Role(0, "Role1", ("Submitter:ListTasks", "General:Impersonate:Role2")),
            Role(1, "Role2", ("Sessions:GetSession",)),
        ):
            await repository.put_role(role)
        for user in (
            User(0, "User1", (0,)),
            User(1, "User2", (0, 1, 42)),  # 42: a role that does not exist
            User(2, "User3", ()),
        ):
            await repository.put_user(user)
        for certificate in (
            Certificate(0, 0, "CNUser1", "Fingerprint1"),
            Certificate(1, 1, "CNUser2", "Fingerprint2"),
            Certificate(2, 1, "CNUser2", None),
            Certificate(3, 99, "CNUser3", "Fingerprint4"),  # user 99 does not exist
            Certificate(4, 2, "CNUser3", None),
        ):
            await repository.put_certificate(certificate)


async def test_certificate_lookup_follows_armonik(database: Database, store: AuthStore) -> None:
    await seed(database)
    user1 = await store.identity_of_certificate("CNUser1", "Fingerprint1")
    assert user1 == Identity(
        0, "User1", ("Role1",), ("Submitter:ListTasks", "General:Impersonate:Role2")
    )
    # Exact fingerprint, or the CN-only entry of that CN.
    exact = await store.identity_of_certificate("CNUser2", "Fingerprint2")
    cn_only = await store.identity_of_certificate("CNUser2", "Fingerprint3")
    assert exact is not None and cn_only is not None
    assert exact.username == cn_only.username == "User2"
    # Unknown role ids are dropped; permissions are the union of the roles'.
    assert exact.roles == ("Role1", "Role2")
    assert set(exact.permissions) == {
        "Submitter:ListTasks",
        "General:Impersonate:Role2",
        "Sessions:GetSession",
    }
    # The exact entry names a user that does not exist: no fallback to the CN-only entry.
    assert await store.identity_of_certificate("CNUser3", "Fingerprint4") is None
    assert (await store.identity_of_certificate("CNUser3", "other")) == Identity(2, "User3")
    # Another CN, or a CN without a CN-only entry and a wrong fingerprint.
    assert await store.identity_of_certificate("CNUser4", "Fingerprint1") is None
    assert await store.identity_of_certificate("CNUser1", "Fingerprint2") is None
    # Comparison is exact.
    assert await store.identity_of_certificate("cnuser1", "Fingerprint1") is None


async def test_user_lookup_for_impersonation(database: Database, store: AuthStore) -> None:
    await seed(database)
    by_id = await store.identity_of_user(1, None)
    assert by_id is not None and by_id.username == "User2"
    by_name = await store.identity_of_user(None, "User1")
    assert by_name is not None and by_name.user_id == 0
    # The id has priority over the name.
    both = await store.identity_of_user(2, "User1")
    assert both is not None and both.username == "User3"
    assert await store.identity_of_user(404, "User1") is None
    assert await store.identity_of_user(None, "user1") is None
    assert await store.identity_of_user(None, None) is None


async def test_administration(store: AuthStore) -> None:
    await store.ensure_builtin_roles()
    await store.ensure_builtin_roles()
    builtin = {role.name: role for role in await store.roles()}
    assert builtin["Monitoring"] == Role(0, "Monitoring", MONITORING_PERMISSIONS)
    assert builtin["Submitter"] == Role(1, "Submitter", PERMISSIONS)

    admin = await store.add_role("Admin", ["General:Impersonate", "General:Impersonate:Submitter"])
    assert admin.role_id == 2
    with pytest.raises(InvalidArgument, match="Sessions"):
        await store.add_role("Bad", ["Sessions"])
    replaced = await store.add_role("Admin", ["General:Impersonate"])
    assert replaced == Role(2, "Admin", ("General:Impersonate",))

    alice = await store.add_user("alice", ["Submitter", "Admin"])
    assert alice == User(0, "alice", (1, 2))
    with pytest.raises(InvalidArgument, match="'Nope'"):
        await store.add_user("bob", ["Monitoring", "Nope"])
    with pytest.raises(InvalidArgument, match="already exists"):
        await store.add_user("alice", [])
    bob = await store.add_user("bob", ["Monitoring"])
    assert bob.user_id == 1
    assert await store.set_user_roles("bob", ["Submitter"]) == User(1, "bob", (1,))
    with pytest.raises(NotFound, match="'carol'"):
        await store.set_user_roles("carol", [])

    # Certificates: the fingerprint is normalised; re-adding is a no-op, for another user an error.
    first = await store.add_certificate("alice", "alice", "AB:CD:EF")
    assert first == Certificate(0, 0, "alice", "abcdef")
    assert await store.add_certificate("alice", "alice", "abcdef") == first
    with pytest.raises(InvalidArgument, match="'alice'"):
        await store.add_certificate("bob", "alice", "abcdef")
    await store.add_certificate("bob", "shared", None)
    with pytest.raises(NotFound):
        await store.add_certificate("nobody", "x", None)
    assert [c.cn for c in await store.certificates()] == ["alice", "shared"]
    identity = await store.identity_of_certificate("alice", "abcdef")
    assert identity is not None and identity.roles == ("Submitter", "Admin")

    # A removed role is taken from its users (a later role with its id is not granted).
    await store.remove_role("Admin")
    with pytest.raises(NotFound, match="'Admin'"):
        await store.remove_role("Admin")
    assert next(u for u in await store.users() if u.username == "alice").roles == (1,)
    later = await store.add_role("Later", ["Tasks:GetTask"])
    assert later.role_id == 2
    identity = await store.identity_of_certificate("alice", "abcdef")
    assert identity is not None and identity.roles == ("Submitter",)

    # A removed certificate or user stops identifying at once.
    await store.remove_certificate("shared", None)
    assert await store.identity_of_certificate("shared", "anything") is None
    with pytest.raises(NotFound):
        await store.remove_certificate("shared", None)
    token = await store.issue_token("alice", "ci")
    await store.remove_user("alice")
    assert await store.identity_of_certificate("alice", "abcdef") is None
    assert await store.identity_of_token(token) is None
    assert await store.certificates() == []
    assert await store.tokens() == []
    with pytest.raises(NotFound, match="'alice'"):
        await store.remove_user("alice")


async def test_tokens(database: Database, store: AuthStore) -> None:
    await store.ensure_builtin_roles()
    await store.add_user("gui", ["Monitoring"])
    token = await store.issue_token("gui", "laptop")
    other = await store.issue_token("gui")
    assert token != other and token.startswith("pyak_")
    identity = await store.identity_of_token(token)
    assert identity is not None and identity.username == "gui"
    assert identity.roles == ("Monitoring",)
    assert await store.identity_of_token(token + "x") is None
    assert await store.identity_of_token("") is None
    # Only the hash is stored.
    async with database.read() as repository:
        rows = await repository.connection.fetch("SELECT * FROM auth_tokens")
    assert {row["token_hash"] for row in rows} == {token_hash(token), token_hash(other)}
    assert token_hash(token) == hashlib.sha256(token.encode()).hexdigest()
    assert all(token not in str(value) for row in rows for value in row.values())
    listed = await store.tokens()
    assert len(listed) == 2 and "laptop" in {t.name for t in listed}
    assert all(t.username == "gui" for t in listed)
    with pytest.raises(InvalidArgument, match="'laptop'"):
        await store.issue_token("gui", "laptop")
    with pytest.raises(NotFound):
        await store.issue_token("nobody")
    await store.revoke_token("laptop")
    assert await store.identity_of_token(token) is None
    assert await store.identity_of_token(other) is not None
    with pytest.raises(NotFound, match="'laptop'"):
        await store.revoke_token("laptop")


PROVISIONING = Provisioning(
    roles=(
        RoleSpec("Role2", ("Sessions:GetSession",)),
        RoleSpec("Role1", ("Submitter:ListTasks", "General:Impersonate:Role2")),
    ),
    users=(UserSpec("User2", ("Role1", "Role2")), UserSpec("User1", ("Role1",))),
    certificates=(
        CertificateSpec("User2", "CN2", "fp-b"),
        CertificateSpec("User1", "CN1", "fp-a"),
        CertificateSpec("User2", "CN2", None),
    ),
)


async def test_provisioning_ids_and_idempotence(store: AuthStore) -> None:
    await store.provision(PROVISIONING)
    await store.provision(PROVISIONING)  # again: nothing changes
    assert await store.roles() == [
        Role(0, "Role1", ("Submitter:ListTasks", "General:Impersonate:Role2")),
        Role(1, "Role2", ("Sessions:GetSession",)),
    ]
    assert await store.users() == [User(0, "User1", (0,)), User(1, "User2", (0, 1))]
    # Certificates by (fingerprint, CN), a null fingerprint first.
    assert await store.certificates() == [
        Certificate(0, 1, "CN2", None),
        Certificate(1, 0, "CN1", "fp-a"),
        Certificate(2, 1, "CN2", "fp-b"),
    ]
    identity = await store.identity_of_certificate("CN2", "unknown")
    assert identity is not None and identity.username == "User2"

    # Updated by name, nothing deleted, existing ids kept; a new entry takes its ArmoniK id
    # when free, else the next free one.
    await store.add_user("manual", [])
    changed = Provisioning(
        roles=(RoleSpec("Role1", ("Tasks:GetTask",)), RoleSpec("Role0", ())),
        users=(UserSpec("User1", ("Role0",)), UserSpec("User9", ("Role1",))),
    )
    await store.provision(changed)
    assert await store.roles() == [
        Role(0, "Role1", ("Tasks:GetTask",)),
        Role(1, "Role2", ("Sessions:GetSession",)),
        Role(2, "Role0", ()),
    ]
    assert await store.users() == [
        User(0, "User1", (2,)),
        User(1, "User2", (0, 1)),
        User(2, "manual", ()),
        User(3, "User9", (0,)),
    ]
    assert len(await store.certificates()) == 3


async def test_provisioning_errors_name_the_entry(store: AuthStore) -> None:
    with pytest.raises(InvalidArgument, match="user 'U': unknown role 'Nope'"):
        await store.provision(Provisioning(users=(UserSpec("U", ("Nope",)),)))
    with pytest.raises(InvalidArgument, match="unknown user 'Ghost'"):
        await store.provision(Provisioning(certificates=(CertificateSpec("Ghost", "cn"),)))
    with pytest.raises(InvalidArgument, match="role 'R'"):
        await store.provision(Provisioning(roles=(RoleSpec("R", ("bad",)),)))
    # Provisioning is self-contained: a role of the database is not enough.
    await store.ensure_builtin_roles()
    with pytest.raises(InvalidArgument, match="'Submitter'"):
        await store.provision(Provisioning(users=(UserSpec("U", ("Submitter",)),)))
    assert await store.users() == []


async def test_postgres_schema_of_version_2_is_upgraded() -> None:
    """A database made before authentication (version 2) gets its tables and the sessions'
    user column at the next start; existing sessions get ''."""
    async with postgres_schema() as url:
        database = PostgresDatabase(url)
        await database.start()
        async with database.write() as repository:
            for table in ("auth_roles", "auth_users", "auth_certificates", "auth_tokens"):
                await repository.connection.execute(f"DROP TABLE {table}")
            await repository.connection.execute("ALTER TABLE sessions DROP COLUMN created_by_user")
            await repository.connection.execute("DELETE FROM schema_version WHERE version >= 3")
            await repository.connection.execute(
                "INSERT INTO sessions (session_id, status, client_submission, worker_submission, "
                "partition_ids) VALUES ('old', 1, true, true, '[]')"
            )
        await database.close()
        again = PostgresDatabase(url)
        await again.start()
        try:
            await check_upgraded(again)
        finally:
            await again.close()


async def test_sqlite_file_without_the_sessions_user_column_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    from pyarmonik.storage.database.sqlite import SqliteDatabase

    path = tmp_path / "old.db"
    database = SqliteDatabase(path)
    await database.start()
    await database.close()
    connection = sqlite3.connect(path)
    connection.execute("DROP INDEX sessions_created_by_user")
    connection.execute("ALTER TABLE sessions DROP COLUMN created_by_user")
    connection.execute(
        "INSERT INTO sessions (session_id, status, client_submission, worker_submission, "
        "partition_ids) VALUES ('old', 1, 1, 1, '[]')"
    )
    connection.commit()
    connection.close()
    again = SqliteDatabase(path)
    await again.start()
    try:
        await check_upgraded(again)
    finally:
        await again.close()


async def check_upgraded(database: Database) -> None:
    from pyarmonik.domain.records import Session

    async with database.read() as repository:
        old = await repository.get(Session, "old")
        assert old is not None and old.created_by_user == ""
    async with database.write() as repository:
        await repository.insert([Session("new", created_by_user="alice")])
    async with database.read() as repository:
        new = await repository.get(Session, "new")
        assert new is not None and new.created_by_user == "alice"
    store = AuthStore(Backends(database, TableQueue(database), FileStorage("/nonexistent")))
    await store.provision(PROVISIONING)
    assert await store.identity_of_certificate("CN1", "fp-a") is not None


async def test_concurrent_provisioning_by_replicas(backend: Backend, tmp_path: Path) -> None:
    """Replicas provisioning the same data at the same start agree (and none fails)."""

    async def replica() -> None:
        database = await backend.open()
        store = AuthStore(Backends(database, TableQueue(database), FileStorage(tmp_path)))
        await store.ensure_builtin_roles()
        await store.provision(PROVISIONING)

    await asyncio.gather(*(replica() for _ in range(4)))
    store = AuthStore(
        Backends(backend.opened[0], TableQueue(backend.opened[0]), FileStorage(tmp_path))
    )
    assert [(r.role_id, r.name) for r in await store.roles()] == [
        (0, "Monitoring"),
        (1, "Submitter"),
        (2, "Role1"),
        (3, "Role2"),
    ]
    assert [(u.user_id, u.username, u.roles) for u in await store.users()] == [
        (0, "User1", (2,)),
        (1, "User2", (2, 3)),
    ]
