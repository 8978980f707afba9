"""ArmoniK's authorization model (domain/auth.py; reference armonik-auth.md §4, §5)."""

from __future__ import annotations

import pytest

from pyarmonik.domain.auth import (
    ANONYMOUS,
    BUILTIN_ROLES,
    MONITORING_PERMISSIONS,
    PERMISSIONS,
    CertificateSpec,
    Identity,
    Permission,
    Provisioning,
    Role,
    RoleSpec,
    User,
    UserSpec,
    normalize_fingerprint,
)
from pyarmonik.domain.errors import InvalidArgument


def test_the_49_permissions_and_the_23_of_monitoring() -> None:
    assert len(PERMISSIONS) == len(set(PERMISSIONS)) == 49
    assert len(MONITORING_PERMISSIONS) == len(set(MONITORING_PERMISSIONS)) == 23
    assert set(MONITORING_PERMISSIONS) < set(PERMISSIONS)
    assert BUILTIN_ROLES == {"Submitter": PERMISSIONS, "Monitoring": MONITORING_PERMISSIONS}
    assert "Sessions:CancelSession" not in MONITORING_PERMISSIONS
    assert ANONYMOUS.username == "Anonymous" and ANONYMOUS.permissions == PERMISSIONS


def test_permission_parse() -> None:
    assert Permission.parse("Submitter:ListTasks") == Permission("Submitter", "ListTasks")
    target = Permission.parse("General:Impersonate:Monitoring")
    assert (target.claim, target.target) == ("General:Impersonate", "Monitoring")
    assert str(target) == "General:Impersonate:Monitoring"
    assert str(Permission.parse("A:B:")) == "A:B"  # an empty target is no target


@pytest.mark.parametrize("text", ["", "Submitter", "A:B:C:D", ":B", "A:", " :B", "A:  ", "A::C"])
def test_permission_parse_errors(text: str) -> None:
    with pytest.raises(InvalidArgument, match="Service:Name"):
        Permission.parse(text)


def test_holds_compares_claims_without_case_and_ignores_targets() -> None:
    identity = Identity(1, "u", ("R",), ("submitter:listtasks", "General:Impersonate:Monitoring"))
    assert identity.holds("Submitter:ListTasks")
    assert identity.holds("SUBMITTER:LISTTASKS")
    assert identity.holds("General:Impersonate")
    assert identity.holds("general:impersonate:Anything")
    assert not identity.holds("Submitter:ListSessions")
    assert not Identity(2, "none").holds("Submitter:ListTasks")


def test_may_impersonate() -> None:
    impersonator = Identity(1, "i", ("Impersonator",), ("General:Impersonate:AllRights",))
    assert impersonator.may_impersonate(("AllRights",))
    assert not impersonator.may_impersonate(("AntiImpersonateRole",))
    assert not impersonator.may_impersonate(("AllRights", "Other"))
    assert impersonator.may_impersonate(())  # a target without roles: always allowed
    assert not impersonator.may_impersonate(("allrights",))  # role names compare exactly
    # Without the General:Impersonate claim, not even a target without roles.
    plain = Identity(2, "p", ("AllRights",), PERMISSIONS[:5])
    assert not plain.may_impersonate(())
    # The claim alone (no target) covers only targets without roles.
    bare = Identity(3, "b", (), ("General:Impersonate",))
    assert bare.may_impersonate(()) and not bare.may_impersonate(("AllRights",))


def test_identity_of_drops_unknown_roles_and_unites_permissions() -> None:
    roles = {
        0: Role(0, "A", ("Tasks:GetTask", "Tasks:ListTasks")),
        1: Role(1, "B", ("Tasks:ListTasks", "Events:GetEvents")),
    }
    identity = Identity.of(User(7, "u", (1, 42, 0)), roles)
    assert identity == Identity(
        7, "u", ("B", "A"), ("Tasks:ListTasks", "Events:GetEvents", "Tasks:GetTask")
    )


def test_normalize_fingerprint() -> None:
    assert normalize_fingerprint("AB:cd:0F") == "abcd0f"
    assert normalize_fingerprint(" abc ") == "abc"


def test_provisioning_order_and_validation() -> None:
    provisioning = Provisioning(
        roles=(RoleSpec("b"), RoleSpec("B"), RoleSpec("a")),
        users=(UserSpec("z", ("a",)), UserSpec("y")),
        certificates=(
            CertificateSpec("z", "cn2", "fp"),
            CertificateSpec("y", "cn9", None),
            CertificateSpec("y", "cn1", "fp"),
        ),
    )
    provisioning.validate("test")
    roles, users, certificates = provisioning.ordered()
    assert [r.name for r in roles] == ["B", "a", "b"]  # ordinal
    assert [u.name for u in users] == ["y", "z"]
    assert [(c.fingerprint, c.cn) for c in certificates] == [
        (None, "cn9"),
        ("fp", "cn1"),
        ("fp", "cn2"),
    ]


@pytest.mark.parametrize(
    ("provisioning", "message"),
    [
        (Provisioning(roles=(RoleSpec("R", ("nope",)),)), "src: role 'R': permission 'nope'"),
        (Provisioning(roles=(RoleSpec("R"), RoleSpec("R"))), "src: role 'R' is given twice"),
        (Provisioning(users=(UserSpec("U", ("R",)),)), "src: user 'U': unknown role 'R'"),
        (Provisioning(certificates=(CertificateSpec("U", "cn"),)), "unknown user 'U'"),
        (
            Provisioning(users=(UserSpec("U"),), certificates=(CertificateSpec("U", "c"),) * 2),
            "given twice",
        ),
        (Provisioning(users=(UserSpec(" "),)), "src: blank name"),
    ],
)
def test_provisioning_errors(provisioning: Provisioning, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        provisioning.validate("src")
