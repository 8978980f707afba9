"""ArmoniK's authorization model (reference: armonik-auth.md): permissions `Service:Name[:Target]`,
roles granting them, users holding roles, and the identity a request runs as.

Pure model: who is allowed what. Where identities come from (certificates, headers, tokens,
the database) is the business of scheduling/auth.py and control/auth.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyarmonik.domain.errors import InvalidArgument

# The 49 permissions of ArmoniK, each named after the rpc it allows, in the order of ArmoniK's
# deployment (its built-in `Submitter` role holds them all).
PERMISSIONS: tuple[str, ...] = (
    *(
        f"Submitter:{name}"
        for name in (
            "GetServiceConfiguration", "CancelSession", "CancelTasks", "CreateSession",
            "CreateSmallTasks", "CreateLargeTasks", "CountTasks", "TryGetResultStream",
            "WaitForCompletion", "TryGetTaskOutput", "WaitForAvailability", "GetTaskStatus",
            "GetResultStatus", "ListTasks", "ListSessions",
        )
    ),
    *(
        f"Sessions:{name}"
        for name in (
            "CancelSession", "GetSession", "ListSessions", "CreateSession", "PauseSession",
            "CloseSession", "PurgeSession", "DeleteSession", "ResumeSession", "StopSubmission",
        )
    ),
    *(
        f"Tasks:{name}"
        for name in (
            "GetTask", "ListTasks", "GetResultIds", "CancelTasks", "CountTasksByStatus",
            "ListTasksDetailed", "SubmitTasks",
        )
    ),
    *(
        f"Results:{name}"
        for name in (
            "GetOwnerTaskId", "ListResults", "CreateResultsMetaData", "CreateResults",
            "DeleteResultsData", "DownloadResultData", "GetServiceConfiguration",
            "UploadResultData", "GetResult", "ImportResultsData",
        )
    ),
    "Applications:ListApplications",
    "Events:GetEvents",
    "General:Impersonate",
    "Partitions:GetPartition",
    "Partitions:ListPartitions",
    "Versions:ListVersions",
    "HealthChecks:CheckHealth",
)  # fmt: skip

# ArmoniK's built-in `Monitoring` role: the read-only permissions.
MONITORING_PERMISSIONS: tuple[str, ...] = (
    "Submitter:GetServiceConfiguration", "Submitter:CountTasks", "Submitter:GetTaskStatus",
    "Submitter:GetResultStatus", "Submitter:ListTasks", "Submitter:ListSessions",
    "Sessions:GetSession", "Sessions:ListSessions",
    "Tasks:GetTask", "Tasks:ListTasks", "Tasks:GetResultIds", "Tasks:CountTasksByStatus",
    "Tasks:ListTasksDetailed",
    "Results:GetOwnerTaskId", "Results:ListResults", "Results:GetServiceConfiguration",
    "Results:GetResult",
    "Applications:ListApplications", "Events:GetEvents",
    "Partitions:GetPartition", "Partitions:ListPartitions",
    "Versions:ListVersions", "HealthChecks:CheckHealth",
)  # fmt: skip

BUILTIN_ROLES: dict[str, tuple[str, ...]] = {
    "Submitter": PERMISSIONS,
    "Monitoring": MONITORING_PERMISSIONS,
}

IMPERSONATE = "General:Impersonate"
# pyarmonik's own: with session isolation on, a user holding it sees every user's sessions.
ALL_SESSIONS = "General:AllSessions"


@dataclass(frozen=True)
class Permission:
    """`Service:Name[:Target]`. The claim (`Service:Name`) is what authorizes an rpc; the
    target only qualifies impersonation (`General:Impersonate:<Role>`)."""

    service: str
    name: str
    target: str = ""

    @staticmethod
    def parse(text: str) -> Permission:
        """Raise InvalidArgument unless `text` has two or three parts, the first two non-blank."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0].strip() or not parts[1].strip():
            raise InvalidArgument(f"permission {text!r} is not Service:Name or Service:Name:Target")
        return Permission(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @property
    def claim(self) -> str:
        return f"{self.service}:{self.name}"

    def __str__(self) -> str:
        return f"{self.claim}:{self.target}" if self.target else self.claim


@dataclass(frozen=True)
class Role:
    role_id: int
    name: str
    permissions: tuple[str, ...] = ()


@dataclass(frozen=True)
class User:
    user_id: int
    username: str
    roles: tuple[int, ...] = ()  # role ids


@dataclass(frozen=True)
class Certificate:
    """A client certificate accepted for a user: CN and fingerprint (lowercase hex SHA-1 of
    the DER bytes), or the CN alone (fingerprint None: any certificate with that CN)."""

    auth_id: int
    user_id: int
    cn: str
    fingerprint: str | None = None


@dataclass(frozen=True)
class Identity:
    """Who a request runs as: a user, the names of its (existing) roles, and the union of
    their permissions, as stored (`General:Impersonate:Monitoring` keeps its target)."""

    user_id: int
    username: str
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    _claims: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        claims = frozenset(Permission.parse(p).claim.casefold() for p in self.permissions)
        object.__setattr__(self, "_claims", claims)

    @staticmethod
    def of(user: User, roles: dict[int, Role]) -> Identity:
        """The identity of `user`; role ids that no longer exist are dropped (as ArmoniK)."""
        held = [roles[r] for r in user.roles if r in roles]
        permissions = dict.fromkeys(p for role in held for p in role.permissions)
        return Identity(
            user.user_id, user.username, tuple(r.name for r in held), tuple(permissions)
        )

    def holds(self, permission: str) -> bool:
        """Whether a permission with this claim (`Service:Name`, any target) is held; names
        compare without regard to case, as ArmoniK's claims do."""
        return Permission.parse(permission).claim.casefold() in self._claims

    def may_impersonate(self, target_roles: tuple[str, ...]) -> bool:
        """ArmoniK's rule: the impersonator holds `General:Impersonate`, and every role of the
        target is covered by a `General:Impersonate:<Role>` (a target without roles always is)."""
        if not self.holds(IMPERSONATE):
            return False
        covered = {
            p.target
            for p in map(Permission.parse, self.permissions)
            if p.claim.casefold() == IMPERSONATE.casefold() and p.target
        }
        return all(role in covered for role in target_roles)


# Whoever calls when authentication is off.
ANONYMOUS = Identity(0, "Anonymous", (), PERMISSIONS)


@dataclass(frozen=True)
class Token:
    """A bearer token of the HTTP API, as listed: never its secret (only a hash is stored)."""

    name: str
    user_id: int
    username: str
    created_at: float


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as ArmoniK compares it: lowercase hex without colons (what openssl's
    `-fingerprint` prints, `AB:CD:...`, is accepted too)."""
    return text.replace(":", "").strip().lower()


# -- provisioning (reference §6) -------------------------------------------------------------


@dataclass(frozen=True)
class RoleSpec:
    name: str
    permissions: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserSpec:
    name: str
    roles: tuple[str, ...] = ()  # role names, among the provisioned roles


@dataclass(frozen=True)
class CertificateSpec:
    user: str
    cn: str
    fingerprint: str | None = None  # None: any certificate with this CN


@dataclass(frozen=True)
class Provisioning:
    """Roles, users and certificates to create or update, by name, as ArmoniK's
    `InitServices__Authentication__*` documents give them: self-contained (users name
    provisioned roles, certificates provisioned users)."""

    roles: tuple[RoleSpec, ...] = ()
    users: tuple[UserSpec, ...] = ()
    certificates: tuple[CertificateSpec, ...] = ()

    def validate(self, source: str) -> None:
        """Raise InvalidArgument, naming `source`, on a bad permission, a duplicate name, or
        a name that nothing provisioned defines."""
        blank = [f"role {r!r}" for r in self.roles if not r.name.strip()]
        blank += [f"user {u!r}" for u in self.users if not u.name.strip()]
        blank += [f"certificate {c!r}" for c in self.certificates if not c.cn.strip()]
        if blank:
            raise InvalidArgument(f"{source}: blank name in {blank[0]}")
        roles = _unique(source, "role", [r.name for r in self.roles])
        users = _unique(source, "user", [u.name for u in self.users])
        _unique(source, "certificate", [(c.cn, c.fingerprint) for c in self.certificates])
        for role in self.roles:
            for permission in role.permissions:
                try:
                    Permission.parse(permission)
                except InvalidArgument as error:
                    raise InvalidArgument(f"{source}: role {role.name!r}: {error}") from None
        for user in self.users:
            for name in user.roles:
                if name not in roles:
                    raise InvalidArgument(f"{source}: user {user.name!r}: unknown role {name!r}")
        for certificate in self.certificates:
            if certificate.user not in users:
                raise InvalidArgument(
                    f"{source}: certificate {certificate.cn!r}: unknown user {certificate.user!r}"
                )

    def ordered(self) -> tuple[list[RoleSpec], list[UserSpec], list[CertificateSpec]]:
        """The entries in the order ArmoniK numbers them (ids 0..n-1): roles and users by
        name, certificates by (fingerprint, CN) with a null fingerprint first. Ordinal order,
        as .NET's comparer gives in invariant-globalization mode."""
        return (
            sorted(self.roles, key=lambda r: r.name),
            sorted(self.users, key=lambda u: u.name),
            sorted(
                self.certificates,
                key=lambda c: (c.fingerprint is not None, c.fingerprint or "", c.cn),
            ),
        )


def _unique(source: str, kind: str, keys: list[object]) -> set[object]:
    seen: set[object] = set()
    for key in keys:
        if key in seen:
            raise InvalidArgument(f"{source}: {kind} {key!r} is given twice")
        seen.add(key)
    return seen
