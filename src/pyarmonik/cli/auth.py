"""`pyarmonik auth`: users, roles, client certificates and HTTP tokens, and a small CA.

ArmoniK has no API for this (its users are edited in the database); these commands work
directly on the database that `pyarmonik control` uses, chosen by the same options
(`--data-dir`, `--database`, `--config`, PYARMONIK_DATABASE).
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.table import Table

from pyarmonik.cli.inspect import Output, _emit
from pyarmonik.domain.auth import Certificate, Role, User
from pyarmonik.domain.errors import ArmoniKError
from pyarmonik.scheduling.auth import AuthStore

T = TypeVar("T")
EXIT_ERROR = 2

app = typer.Typer(
    no_args_is_help=True,
    help="Users, roles, client certificates and HTTP tokens (in the database of `pyarmonik "
    "control`), and a CA to issue certificates. Built-in roles Submitter (every permission) "
    "and Monitoring (read-only) are created by any command that writes. Exit codes: 0 done; "
    "2 any error (bad option or file, unknown user or role, ...), with one line "
    "`error: ...` on stderr.",
)

ConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML or JSON settings file.")]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Folder of the embedded backends.")
]
DatabaseOption = Annotated[
    str | None, typer.Option("--database", envvar="PYARMONIK_DATABASE", help="Database URL.")
]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="Output format.")]
RolesOption = Annotated[list[str] | None, typer.Option("--role", help="A role (repeatable).")]
CertOption = Annotated[
    Path | None,
    typer.Option("--cert", help="Certificate file (PEM or DER): its CN and fingerprint."),
]
CnOption = Annotated[str | None, typer.Option("--cn", help="Common name of the certificate.")]
FingerprintOption = Annotated[
    str | None,
    typer.Option(
        "--fingerprint",
        help="SHA-1 fingerprint (hex, colons allowed); without it, any certificate with the CN.",
    ),
]
CaCertOption = Annotated[Path, typer.Option("--ca-cert", help="CA certificate (PEM).")]
CaKeyOption = Annotated[Path, typer.Option("--ca-key", help="CA private key (PEM).")]
DaysOption = Annotated[int, typer.Option("--days", help="Validity in days.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite existing files.")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_ERROR)


def _with_store(
    config: Path | None,
    data_dir: Path | None,
    database: str | None,
    action: Callable[[AuthStore], Awaitable[T]],
    write: bool = False,
) -> T:
    """Run `action` on the store of the configured database; errors become one line, exit 2."""
    from pyarmonik.config import load_settings
    from pyarmonik.storage.factory import open_backends

    try:
        settings = load_settings(config, data_dir=data_dir, database=database)
        backends = open_backends(settings)
    except (ArmoniKError, ValueError) as error:
        _fail(_one_line(error))

    async def run() -> T:
        await backends.database.start()
        try:
            store = AuthStore(backends)
            if write:
                await store.ensure_builtin_roles()
            return await action(store)
        finally:
            await backends.database.close()

    try:
        return asyncio.run(run())
    except ArmoniKError as error:
        _fail(_one_line(error))


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        _fail(f"{path}: cannot read the {what}: {error.strerror or error}")


def _write(files: dict[Path, bytes], force: bool) -> None:
    """Write the files (keys readable by their owner only), refusing to overwrite any unless
    `force`; the check comes first, so nothing is written when one exists."""
    if not force:
        for path in files:
            if path.exists():
                _fail(f"{path} exists (use --force to overwrite it)")
    for path, data in files.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            private = path.suffix in (".key", ".p12")
            descriptor = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644
            )
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            if private:
                path.chmod(0o600)
        except OSError as error:
            _fail(f"{path}: cannot write: {error.strerror or error}")
        typer.echo(f"wrote {path}")


def _certificate_key(
    cert: Path | None, cn: str | None, fingerprint: str | None
) -> tuple[str, str | None]:
    """(CN, fingerprint) from --cert, or from --cn [--fingerprint]."""
    from pyarmonik.certificates import cn_and_fingerprint

    if (cert is None) == (cn is None):
        _fail("give either --cert FILE or --cn CN [--fingerprint FP]")
    if cert is not None:
        if fingerprint is not None:
            _fail("--fingerprint goes with --cn, not with --cert")
        try:
            return cn_and_fingerprint(_read(cert, "certificate"))
        except ArmoniKError as error:
            _fail(f"{cert}: {_one_line(error)}")
    assert cn is not None
    return cn, fingerprint


# -- listings -------------------------------------------------------------------------------


def _table(title: str, headers: list[str], rows: list[list[str]]) -> Callable[[], Table]:
    def table() -> Table:
        view = Table(caption=f"{len(rows)} {title}", caption_justify="left")
        for header in headers:
            view.add_column(header, overflow="fold")
        for row in rows:
            view.add_row(*row)
        return view

    return table


@app.command()
def users(
    output: OutputOption = Output.table,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """List the users and their roles."""

    async def fetch(store: AuthStore) -> tuple[list[User], list[Role]]:
        return await store.users(), await store.roles()

    found, roles = _with_store(config, data_dir, database, fetch)
    names = {role.role_id: role.name for role in roles}
    held = {u.user_id: [names[r] for r in u.roles if r in names] for u in found}
    data = [{"user_id": u.user_id, "username": u.username, "roles": held[u.user_id]} for u in found]
    rows = [[str(u.user_id), u.username, ", ".join(held[u.user_id])] for u in found]
    _emit(data, output, _table("users", ["id", "username", "roles"], rows))


@app.command()
def roles(
    output: OutputOption = Output.table,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """List the roles and their permissions."""
    found = _with_store(config, data_dir, database, lambda store: store.roles())
    data = [
        {"role_id": r.role_id, "name": r.name, "permissions": list(r.permissions)} for r in found
    ]
    rows = [[str(r.role_id), r.name, " ".join(r.permissions)] for r in found]
    _emit(data, output, _table("roles", ["id", "name", "permissions"], rows))


@app.command()
def certificates(
    output: OutputOption = Output.table,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """List the accepted client certificates (a CN without fingerprint: any certificate)."""

    async def fetch(store: AuthStore) -> tuple[list[Certificate], list[User]]:
        return await store.certificates(), await store.users()

    found, known = _with_store(config, data_dir, database, fetch)
    names = {user.user_id: user.username for user in known}
    data = [
        {
            "auth_id": c.auth_id,
            "username": names.get(c.user_id, ""),
            "user_id": c.user_id,
            "cn": c.cn,
            "fingerprint": c.fingerprint,
        }
        for c in found
    ]
    rows = [
        [
            str(c.auth_id),
            names.get(c.user_id, f"(unknown id {c.user_id})"),
            c.cn,
            c.fingerprint or "(any)",
        ]
        for c in found
    ]
    _emit(data, output, _table("certificates", ["id", "user", "cn", "fingerprint"], rows))


@app.command()
def tokens(
    output: OutputOption = Output.table,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """List the HTTP bearer tokens (names and users; the secrets are not stored)."""
    found = _with_store(config, data_dir, database, lambda store: store.tokens())
    data: list[dict[str, Any]] = [
        {
            "name": t.name,
            "username": t.username,
            "user_id": t.user_id,
            "created_at": datetime.datetime.fromtimestamp(t.created_at).astimezone().isoformat(),
        }
        for t in found
    ]
    rows = [[d["name"], d["username"], d["created_at"]] for d in data]
    _emit(data, output, _table("tokens", ["name", "user", "created"], rows))


# -- administration -------------------------------------------------------------------------


@app.command("add-user")
def add_user(
    user: Annotated[str, typer.Argument(help="Username.")],
    role: RolesOption = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a user with these roles."""
    _with_store(config, data_dir, database, lambda store: store.add_user(user, role or []), True)
    typer.echo(f"user {user!r} added with roles: {', '.join(role or []) or '(none)'}")


@app.command("set-roles")
def set_roles(
    user: Annotated[str, typer.Argument(help="Username.")],
    role: RolesOption = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Replace the roles of a user (none given: no role left)."""
    _with_store(
        config, data_dir, database, lambda store: store.set_user_roles(user, role or []), True
    )
    typer.echo(f"user {user!r} now has roles: {', '.join(role or []) or '(none)'}")


@app.command("remove-user")
def remove_user(
    user: Annotated[str, typer.Argument(help="Username.")],
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete a user with its certificates and tokens."""
    _with_store(config, data_dir, database, lambda store: store.remove_user(user), True)
    typer.echo(f"user {user!r} removed")


@app.command("add-role")
def add_role(
    name: Annotated[str, typer.Argument(help="Role name.")],
    permission: Annotated[
        list[str] | None,
        typer.Option("--permission", help="Service:Name or Service:Name:Target (repeatable)."),
    ] = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a role, or replace the permissions of an existing one."""
    _with_store(
        config, data_dir, database, lambda store: store.add_role(name, permission or []), True
    )
    typer.echo(f"role {name!r} has {len(set(permission or []))} permissions")


@app.command("remove-role")
def remove_role(
    name: Annotated[str, typer.Argument(help="Role name.")],
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete a role (its users lose it)."""
    _with_store(config, data_dir, database, lambda store: store.remove_role(name), True)
    typer.echo(f"role {name!r} removed")


@app.command("add-certificate")
def add_certificate(
    user: Annotated[str, typer.Argument(help="Username.")],
    cert: CertOption = None,
    cn: CnOption = None,
    fingerprint: FingerprintOption = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Accept a client certificate for a user: --cert FILE, or --cn CN [--fingerprint FP]."""
    key_cn, key_fingerprint = _certificate_key(cert, cn, fingerprint)
    added = _with_store(
        config,
        data_dir,
        database,
        lambda store: store.add_certificate(user, key_cn, key_fingerprint),
        True,
    )
    typer.echo(
        f"certificate CN={added.cn} fingerprint={added.fingerprint or '(any)'} accepted for {user!r}"
    )


@app.command("remove-certificate")
def remove_certificate(
    cert: CertOption = None,
    cn: CnOption = None,
    fingerprint: FingerprintOption = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Stop accepting a certificate: --cert FILE, or --cn CN [--fingerprint FP] (without
    --fingerprint: the CN-only entry)."""
    key_cn, key_fingerprint = _certificate_key(cert, cn, fingerprint)
    _with_store(
        config,
        data_dir,
        database,
        lambda store: store.remove_certificate(key_cn, key_fingerprint),
        True,
    )
    typer.echo(f"certificate CN={key_cn} fingerprint={key_fingerprint or '(any)'} removed")


@app.command()
def token(
    user: Annotated[str, typer.Argument(help="Username.")],
    name: Annotated[
        str | None,
        typer.Option("--name", help="Token name, to revoke it by (default: USER-<random>)."),
    ] = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Issue a bearer token for the GUI and the HTTP API; printed once on stdout (only its
    hash is stored)."""
    from pyarmonik.scheduling.auth import new_token_name

    chosen = name or new_token_name(user)
    secret = _with_store(
        config, data_dir, database, lambda store: store.issue_token(user, chosen), True
    )
    typer.echo(
        f"token {chosen!r} for user {user!r} (shown once; revoke it with "
        f"`pyarmonik auth revoke-token {chosen}`)",
        err=True,
    )
    typer.echo(secret)


@app.command("revoke-token")
def revoke_token(
    name: Annotated[str, typer.Argument(help="Token name (see `pyarmonik auth tokens`).")],
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a bearer token."""
    _with_store(config, data_dir, database, lambda store: store.revoke_token(name), True)
    typer.echo(f"token {name!r} revoked")


@app.command()
def provision(
    auth_file: Annotated[
        Path,
        typer.Option(
            "--auth-file",
            help="ArmoniK's authentication_datafile (JSON or YAML): certificates_list, "
            "users_list, roles_list.",
        ),
    ],
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Create or update the roles, users and certificates of an ArmoniK auth file (merged with
    the built-in roles); nothing is deleted."""
    from pyarmonik.scheduling.auth import provisioning_from_file

    try:
        loaded = provisioning_from_file(auth_file)
    except ArmoniKError as error:
        _fail(_one_line(error))
    _with_store(
        config, data_dir, database, lambda store: store.provision(loaded, str(auth_file)), True
    )
    typer.echo(
        f"provisioned {len(loaded.roles)} roles, {len(loaded.users)} users, "
        f"{len(loaded.certificates)} certificates from {auth_file}"
    )


# -- certificates ---------------------------------------------------------------------------


@app.command()
def ca(
    out: Annotated[Path, typer.Option("--out", help="Folder for ca.crt and ca.key.")],
    cn: Annotated[str, typer.Option("--cn", help="Common name of the CA.")] = "pyarmonik CA",
    days: DaysOption = 3650,
    force: ForceOption = False,
) -> None:
    """Make a CA (ca.crt, ca.key) to sign server and client certificates."""
    from pyarmonik.certificates import make_ca

    try:
        certificate, key = make_ca(cn, days)
    except ArmoniKError as error:
        _fail(_one_line(error))
    _write({out / "ca.crt": certificate, out / "ca.key": key}, force)


def _ca_files(ca_cert: Path, ca_key: Path) -> tuple[bytes, bytes]:
    return _read(ca_cert, "CA certificate"), _read(ca_key, "CA key")


@app.command("server-cert")
def server_cert(
    ca_cert: CaCertOption,
    ca_key: CaKeyOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for server.crt and server.key.")],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host", help="DNS name or IP address (repeatable; default: 127.0.0.1 and localhost)."
        ),
    ] = None,
    days: DaysOption = 365,
    force: ForceOption = False,
) -> None:
    """Issue the control plane's TLS certificate (server.crt, server.key), signed by the CA."""
    from pyarmonik.certificates import issue_server_certificate

    authority, authority_key = _ca_files(ca_cert, ca_key)
    try:
        certificate, key = issue_server_certificate(
            authority, authority_key, host or ["127.0.0.1", "localhost"], days
        )
    except ArmoniKError as error:
        _fail(f"{ca_cert}, {ca_key}: {_one_line(error)}")
    _write({out / "server.crt": certificate, out / "server.key": key}, force)


@app.command()
def issue(
    user: Annotated[str, typer.Argument(help="Username (created if absent).")],
    ca_cert: CaCertOption,
    ca_key: CaKeyOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for USER.crt, .key, .p12.")] = Path(
        "."
    ),
    cn: Annotated[
        str | None, typer.Option("--cn", help="Common name (default: the username).")
    ] = None,
    days: DaysOption = 365,
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help="Roles of the user when it is created (repeatable)."),
    ] = None,
    force: ForceOption = False,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    config: ConfigOption = None,
) -> None:
    """Issue a client certificate signed by the CA (USER.crt, USER.key, and USER.p12 with an
    empty password) and accept it for USER (CN and fingerprint), creating USER with --role if
    absent."""
    from pyarmonik.certificates import cn_and_fingerprint, issue_client_certificate

    if not user or "/" in user or user in (".", ".."):
        _fail(f"username {user!r} cannot name files")
    files = [out / f"{user}{suffix}" for suffix in (".crt", ".key", ".p12")]
    if not force:
        for path in files:
            if path.exists():
                _fail(f"{path} exists (use --force to overwrite it)")
    authority, authority_key = _ca_files(ca_cert, ca_key)
    try:
        certificate, key, p12 = issue_client_certificate(authority, authority_key, cn or user, days)
    except ArmoniKError as error:
        _fail(f"{ca_cert}, {ca_key}: {_one_line(error)}")
    subject, fingerprint = cn_and_fingerprint(certificate)

    async def register(store: AuthStore) -> bool:
        created = not any(u.username == user for u in await store.users())
        if created:
            await store.add_user(user, role or [])
        await store.add_certificate(user, subject, fingerprint)
        return created

    created = _with_store(config, data_dir, database, register, True)
    _write(dict(zip(files, (certificate, key, p12), strict=True)), force=True)
    if created:
        typer.echo(f"user {user!r} created with roles: {', '.join(role or []) or '(none)'}")
    elif role:
        typer.echo(f"user {user!r} exists: its roles are unchanged (see set-roles)", err=True)
    typer.echo(f"certificate CN={subject} fingerprint={fingerprint} accepted for {user!r}")
