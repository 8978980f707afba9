"""Users, roles, client certificates and HTTP tokens, in the database (reference
armonik-auth.md §3, §6): the identity behind a certificate, a token or an impersonation
header; their administration (`pyarmonik auth`); provisioning as ArmoniK's
`InitServices__Authentication__*` variables and `authentication_datafile` give it.

Lookups are one or two indexed queries and cache nothing: the request side caches
identities for a few seconds, so a removed user, certificate or token stops working soon.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pyarmonik.domain.auth import (
    BUILTIN_ROLES,
    Certificate,
    CertificateSpec,
    Identity,
    Permission,
    Provisioning,
    Role,
    RoleSpec,
    Token,
    User,
    UserSpec,
    normalize_fingerprint,
)
from pyarmonik.domain.errors import InvalidArgument, NotFound
from pyarmonik.scheduling.backends import Backends, now
from pyarmonik.storage.database import Repository

__all__ = [
    "AuthStore",
    "Provisioning",
    "new_token_name",
    "provisioning_from_environment",
    "provisioning_from_file",
    "token_hash",
]

K = TypeVar("K")
V = TypeVar("V")
TOKEN_PREFIX = "pyak_"  # tells a pyarmonik token apart in logs and secret scanners


def token_hash(token: str) -> str:
    """What is stored of a token: its SHA-256 (the secret is random, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token_name(username: str) -> str:
    """A fresh name for a token of this user (the key to revoke it by)."""
    return f"{username}-{secrets.token_hex(4)}"


class AuthStore:
    """The authentication tables of the database: lookups for the request side and the
    administration of `pyarmonik auth`."""

    def __init__(self, backends: Backends):
        self.database = backends.database

    # -- identities ------------------------------------------------------------------------

    async def identity_of_certificate(self, cn: str, fingerprint: str) -> Identity | None:
        """ArmoniK's lookup: the entry of this CN and fingerprint, else the CN-only entry; its
        user must exist (no fallback to another entry); roles that no longer exist are dropped."""
        async with self.database.read() as repository:
            return await _identity(repository, await repository.certificate_user(cn, fingerprint))

    async def identity_of_user(self, user_id: int | None, username: str | None) -> Identity | None:
        """The target of an impersonation: by id when given (it has priority), else by name."""
        if user_id is None and username is None:
            return None
        async with self.database.read() as repository:
            if user_id is not None:
                found = await repository.users(user_id=user_id)
            else:
                found = await repository.users(username=username)
            return await _identity(repository, found[0] if found else None)

    async def identity_of_token(self, token: str) -> Identity | None:
        """The user of a bearer token that exists (not revoked)."""
        if not token:
            return None
        async with self.database.read() as repository:
            return await _identity(repository, await repository.token_user(token_hash(token)))

    # -- roles -----------------------------------------------------------------------------

    async def add_role(self, name: str, permissions: list[str]) -> Role:
        """Create a role, or replace the permissions of the role of that name (keeping its id)."""
        _nonblank("role name", name)
        for permission in permissions:
            Permission.parse(permission)
        async with self.database.write() as repository:
            await repository.lock_authentication()
            existing = _by(await repository.roles(), lambda r: r.name).get(name)
            role_id = existing.role_id if existing else await repository.next_auth_id("auth_roles")
            role = Role(role_id, name, tuple(dict.fromkeys(permissions)))
            await repository.put_role(role)
        return role

    async def remove_role(self, name: str) -> None:
        """Delete a role and take it from its users (so a role made later with the same id
        would not be granted to them)."""
        async with self.database.write() as repository:
            await repository.lock_authentication()
            role = _by(await repository.roles(), lambda r: r.name).get(name)
            if role is None:
                raise NotFound(f"unknown role {name!r}")
            await repository.delete_role(role.role_id)
            for user in await repository.users():
                if role.role_id in user.roles:
                    kept = tuple(r for r in user.roles if r != role.role_id)
                    await repository.put_user(User(user.user_id, user.username, kept))

    async def roles(self) -> list[Role]:
        async with self.database.read() as repository:
            return await repository.roles()

    async def ensure_builtin_roles(self) -> None:
        """Create ArmoniK's built-in roles (`Submitter`, `Monitoring`) that do not exist; one
        that exists is left as it is."""
        async with self.database.write() as repository:
            await repository.lock_authentication()
            existing = {role.name for role in await repository.roles()}
            for name in sorted(BUILTIN_ROLES):
                if name not in existing:
                    role_id = await repository.next_auth_id("auth_roles")
                    await repository.put_role(Role(role_id, name, BUILTIN_ROLES[name]))

    # -- users -----------------------------------------------------------------------------

    async def add_user(self, username: str, roles: list[str]) -> User:
        _nonblank("username", username)
        async with self.database.write() as repository:
            await repository.lock_authentication()
            if await repository.users(username=username):
                raise InvalidArgument(f"user {username!r} already exists")
            role_ids = await _role_ids(repository, roles)
            user = User(await repository.next_auth_id("auth_users"), username, role_ids)
            await repository.put_user(user)
        return user

    async def set_user_roles(self, username: str, roles: list[str]) -> User:
        async with self.database.write() as repository:
            await repository.lock_authentication()
            found = await _user(repository, username)
            user = User(found.user_id, username, await _role_ids(repository, roles))
            await repository.put_user(user)
        return user

    async def remove_user(self, username: str) -> None:
        """Delete a user with its certificates and tokens."""
        async with self.database.write() as repository:
            await repository.lock_authentication()
            await repository.delete_user((await _user(repository, username)).user_id)

    async def users(self) -> list[User]:
        async with self.database.read() as repository:
            return await repository.users()

    # -- certificates ----------------------------------------------------------------------

    async def add_certificate(self, username: str, cn: str, fingerprint: str | None) -> Certificate:
        """Accept a certificate (CN and fingerprint, or the CN alone: any certificate with it)
        for a user. The fingerprint is normalised (lowercase, no colons); adding an entry the
        user already has is a no-op, one another user has an error."""
        _nonblank("CN", cn)
        fingerprint = normalize_fingerprint(fingerprint) if fingerprint is not None else None
        if fingerprint == "":
            raise InvalidArgument("the fingerprint is blank (omit it to accept any certificate)")
        async with self.database.write() as repository:
            await repository.lock_authentication()
            user = await _user(repository, username)
            existing = await repository.certificate(cn, fingerprint)
            if existing is not None:
                if existing.user_id == user.user_id:
                    return existing
                owner = await repository.users(user_id=existing.user_id)
                holder = repr(owner[0].username) if owner else f"id {existing.user_id}"
                raise InvalidArgument(
                    f"certificate {_describe(cn, fingerprint)} already belongs to user {holder}"
                )
            certificate = Certificate(
                await repository.next_auth_id("auth_certificates"), user.user_id, cn, fingerprint
            )
            await repository.put_certificate(certificate)
        return certificate

    async def remove_certificate(self, cn: str, fingerprint: str | None) -> None:
        fingerprint = normalize_fingerprint(fingerprint) if fingerprint is not None else None
        async with self.database.write() as repository:
            await repository.lock_authentication()
            existing = await repository.certificate(cn, fingerprint)
            if existing is None:
                raise NotFound(f"unknown certificate {_describe(cn, fingerprint)}")
            await repository.delete_certificate(existing.auth_id)

    async def certificates(self) -> list[Certificate]:
        async with self.database.read() as repository:
            return await repository.certificates()

    # -- tokens ----------------------------------------------------------------------------

    async def issue_token(self, username: str, name: str = "") -> str:
        """A new bearer token for a user, returned once: only its hash is stored. `name` (by
        default `new_token_name(username)`) is the key to revoke it by."""
        name = name or new_token_name(username)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.database.write() as repository:
            await repository.lock_authentication()
            user = await _user(repository, username)
            if await repository.tokens(name):
                raise InvalidArgument(f"a token named {name!r} already exists")
            await repository.insert_token(name, user.user_id, token_hash(token), now())
        return token

    async def revoke_token(self, name: str) -> None:
        async with self.database.write() as repository:
            await repository.lock_authentication()
            if not await repository.delete_token(name):
                raise NotFound(f"unknown token {name!r}")

    async def tokens(self) -> list[Token]:
        async with self.database.read() as repository:
            return await repository.tokens()

    # -- provisioning ----------------------------------------------------------------------

    async def provision(self, provisioning: Provisioning, source: str = "provisioning") -> None:
        """Create or update roles, users and certificates, in one transaction; nothing is
        deleted. Entries are matched by name (certificates by CN and fingerprint) and keep
        their ids; a new entry gets ArmoniK's id (its rank in ArmoniK's order) when that id is
        free, else the next free one. So a fresh database gets exactly ArmoniK's ids, running
        it again changes nothing, and no id ever moves to another user or role (a certificate
        or impersonation id pointing at someone else)."""
        provisioning.validate(source)
        roles, users, certificates = provisioning.ordered()
        async with self.database.write() as repository:
            await repository.lock_authentication()
            role_ids: dict[str, int] = {}
            existing_roles = _by(await repository.roles(), lambda r: r.name)
            taken = {r.role_id for r in existing_roles.values()}
            for rank, role_spec in enumerate(roles):
                role_id = _id_for(existing_roles.get(role_spec.name), rank, taken)
                await repository.put_role(Role(role_id, role_spec.name, role_spec.permissions))
                role_ids[role_spec.name] = role_id
            user_ids: dict[str, int] = {}
            existing_users = _by(await repository.users(), lambda u: u.username)
            taken = {u.user_id for u in existing_users.values()}
            for rank, user_spec in enumerate(users):
                user_id = _id_for(existing_users.get(user_spec.name), rank, taken)
                held = tuple(role_ids[name] for name in user_spec.roles)
                await repository.put_user(User(user_id, user_spec.name, held))
                user_ids[user_spec.name] = user_id
            existing_certificates = _by(
                await repository.certificates(), lambda c: (c.cn, c.fingerprint)
            )
            taken = {c.auth_id for c in existing_certificates.values()}
            for rank, spec in enumerate(certificates):
                found = existing_certificates.get((spec.cn, spec.fingerprint))
                auth_id = _id_for(found, rank, taken)
                await repository.put_certificate(
                    Certificate(auth_id, user_ids[spec.user], spec.cn, spec.fingerprint)
                )


async def _identity(repository: Repository, user: User | None) -> Identity | None:
    if user is None:
        return None
    roles = await repository.roles(sorted(set(user.roles)))
    return Identity.of(user, {role.role_id: role for role in roles})


async def _user(repository: Repository, username: str) -> User:
    found = await repository.users(username=username)
    if not found:
        raise NotFound(f"unknown user {username!r}")
    return found[0]


async def _role_ids(repository: Repository, names: list[str]) -> tuple[int, ...]:
    roles = _by(await repository.roles(), lambda r: r.name)
    unknown = [name for name in names if name not in roles]
    if unknown:
        raise InvalidArgument(f"unknown role {unknown[0]!r}")
    return tuple(dict.fromkeys(roles[name].role_id for name in names))


def _by(items: list[V], key: Callable[[V], K]) -> dict[K, V]:
    return {key(item): item for item in items}


def _id_for(existing: Role | User | Certificate | None, rank: int, taken: set[int]) -> int:
    """The id of an existing entry; else `rank` (ArmoniK's id) if free, else the next free."""
    if isinstance(existing, Role):
        return existing.role_id
    if isinstance(existing, User):
        return existing.user_id
    if isinstance(existing, Certificate):
        return existing.auth_id
    chosen = rank if rank not in taken else max(taken) + 1
    taken.add(chosen)
    return chosen


def _nonblank(what: str, value: str) -> None:
    if not value.strip():
        raise InvalidArgument(f"the {what} is blank")


def _describe(cn: str, fingerprint: str | None) -> str:
    return f"CN={cn!r} " + (f"fingerprint={fingerprint}" if fingerprint else "(any fingerprint)")


# -- parsers ---------------------------------------------------------------------------------

_ENV_PREFIX = "InitServices__Authentication__"


def provisioning_from_environment(environ: Mapping[str, str]) -> Provisioning:
    """ArmoniK's `InitServices__Authentication__{Roles,Users,UserCertificates}__<i>`
    variables, each one JSON document with case-sensitive keys (`{"Name","Permissions"}`,
    `{"Name","Roles"}`, `{"User","Cn","Fingerprint"?}`). Variable names compare without
    regard to case, as .NET's configuration does."""
    documents: dict[str, list[tuple[int, str, dict[str, Any]]]] = {
        "roles": [],
        "users": [],
        "usercertificates": [],
    }
    for variable, text in environ.items():
        head, _, index = variable.rpartition("__")
        if not head.lower().startswith(_ENV_PREFIX.lower()) or not index.isdigit():
            continue
        section = head[len(_ENV_PREFIX) :].lower()
        if section not in documents:
            continue
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidArgument(f"{variable}: not valid JSON: {error}") from None
        if not isinstance(document, dict):
            raise InvalidArgument(f"{variable}: expected a JSON object")
        documents[section].append((int(index), variable, document))
    roles = [
        RoleSpec(_text(d, "Name", v), _texts(d, "Permissions", v))
        for _, v, d in sorted(documents["roles"], key=lambda x: x[0])
    ]
    users = [
        UserSpec(_text(d, "Name", v), _texts(d, "Roles", v))
        for _, v, d in sorted(documents["users"], key=lambda x: x[0])
    ]
    certificates = [
        CertificateSpec(_text(d, "User", v), _text(d, "Cn", v), _optional_text(d, "Fingerprint", v))
        for _, v, d in sorted(documents["usercertificates"], key=lambda x: x[0])
    ]
    provisioning = Provisioning(tuple(roles), tuple(users), tuple(certificates))
    provisioning.validate(f"{_ENV_PREFIX}* variables")
    return provisioning


_FILE_KEYS = ("certificates_list", "users_list", "roles_list")


def provisioning_from_file(path: Path) -> Provisioning:
    """ArmoniK's `authentication_datafile`, in JSON or YAML: `{"certificates_list": [{"Cn",
    "Fingerprint" (null or absent: any certificate with that CN), "Username"}], "users_list":
    [{"Username", "Roles"}], "roles_list": [{"RoleName", "Permissions"}]}` (each list may be
    absent), merged with the built-in roles, as ArmoniK's deployment does; a role of the file
    named like a built-in one replaces it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise InvalidArgument(f"{path}: cannot read the auth file: {reason}") from None
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise InvalidArgument(f"{path}: not valid {kind}: {_one_line(error)}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise InvalidArgument(f"{path}: expected a mapping with {', '.join(_FILE_KEYS)}")
    unknown = [key for key in document if key not in _FILE_KEYS]
    if unknown:
        raise InvalidArgument(
            f"{path}: unknown key {unknown[0]!r} (expected {', '.join(_FILE_KEYS)})"
        )
    entries = {key: _list(document, key, path) for key in _FILE_KEYS}
    where = str(path)
    file_roles = {
        _text(r, "RoleName", where): _texts(r, "Permissions", where) for r in entries["roles_list"]
    }
    if len(file_roles) < len(entries["roles_list"]):
        raise InvalidArgument(f"{path}: a role of roles_list is given twice")
    roles = {**BUILTIN_ROLES, **file_roles}
    provisioning = Provisioning(
        tuple(RoleSpec(name, permissions) for name, permissions in roles.items()),
        tuple(
            UserSpec(_text(u, "Username", where), _texts(u, "Roles", where))
            for u in entries["users_list"]
        ),
        tuple(
            CertificateSpec(
                _text(c, "Username", where),
                _text(c, "Cn", where),
                _optional_text(c, "Fingerprint", where),
            )
            for c in entries["certificates_list"]
        ),
    )
    provisioning.validate(where)
    return provisioning


def _list(document: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = document.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidArgument(f"{path}: {key} must be a list of mappings")
    return value


def _text(document: dict[str, Any], key: str, where: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        problem = "missing" if value is None else "not a string"
        raise InvalidArgument(f"{where}: {key!r} is {problem} in {_short(document)}")
    return value


def _optional_text(document: dict[str, Any], key: str, where: str) -> str | None:
    return None if document.get(key) is None else _text(document, key, where)


def _texts(document: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = document.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problem = "missing" if value is None else "not a list of strings"
        raise InvalidArgument(f"{where}: {key!r} is {problem} in {_short(document)}")
    return tuple(value)


def _short(document: dict[str, Any]) -> str:
    text = json.dumps(document, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
