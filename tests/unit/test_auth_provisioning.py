"""Provisioning parsers: ArmoniK's InitServices__Authentication__* variables and its
authentication_datafile (reference armonik-auth.md §6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyarmonik.domain.auth import (
    MONITORING_PERMISSIONS,
    PERMISSIONS,
    CertificateSpec,
    Provisioning,
    RoleSpec,
    UserSpec,
)
from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.scheduling.auth import provisioning_from_environment, provisioning_from_file

PREFIX = "InitServices__Authentication__"

# The reference's examples, verbatim.
REFERENCE = {
    f"{PREFIX}Roles__0": '{"Name":"Role1","Permissions":["Submitter:ListTasks","General:Impersonate:Role2"]}',
    f"{PREFIX}Users__0": '{"Name":"User1","Roles":["Role1"]}',
    f"{PREFIX}UserCertificates__0": '{"User":"User1","Cn":"CN1","Fingerprint":"fp"}',
}


def test_environment_of_the_reference() -> None:
    assert provisioning_from_environment({**REFERENCE, "PATH": "/bin"}) == Provisioning(
        roles=(RoleSpec("Role1", ("Submitter:ListTasks", "General:Impersonate:Role2")),),
        users=(UserSpec("User1", ("Role1",)),),
        certificates=(CertificateSpec("User1", "CN1", "fp"),),
    )


def test_environment_fingerprint_optional_or_null_and_numeric_order() -> None:
    environ = {
        **REFERENCE,
        f"{PREFIX}UserCertificates__10": '{"User":"User1","Cn":"CN3"}',
        f"{PREFIX}UserCertificates__2": '{"User":"User1","Cn":"CN2","Fingerprint":null}',
        f"{PREFIX}Users__1": '{"Name":"User0","Roles":[],"Extra":1}',  # unknown keys ignored
        "initservices__authentication__roles__1": '{"Name":"Role0","Permissions":[]}',
        f"{PREFIX}Roles__x": "not a document",  # not an index: not ours
    }
    provisioning = provisioning_from_environment(environ)
    assert [c.cn for c in provisioning.certificates] == ["CN1", "CN2", "CN3"]
    assert [c.fingerprint for c in provisioning.certificates] == ["fp", None, None]
    assert [u.name for u in provisioning.users] == ["User1", "User0"]
    assert [r.name for r in provisioning.roles] == ["Role1", "Role0"]


def test_environment_without_variables_is_empty() -> None:
    assert provisioning_from_environment({"HOME": "/root"}) == Provisioning()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (f"{PREFIX}Roles__1", "{not json", f"{PREFIX}Roles__1: not valid JSON"),
        (f"{PREFIX}Roles__1", "[1]", "expected a JSON object"),
        (f"{PREFIX}Roles__1", '{"name":"R","permissions":[]}', "'Name' is missing"),
        (f"{PREFIX}Roles__1", '{"Name":"R","Permissions":"Tasks:GetTask"}', "'Permissions'"),
        (f"{PREFIX}Roles__1", '{"Name":"R","Permissions":["Tasks"]}', "permission 'Tasks'"),
        (f"{PREFIX}Users__1", '{"Name":"U","Roles":["Nope"]}', "unknown role 'Nope'"),
        (f"{PREFIX}UserCertificates__1", '{"User":"Ghost","Cn":"c"}', "unknown user 'Ghost'"),
        (f"{PREFIX}UserCertificates__1", '{"User":"User1"}', "'Cn' is missing"),
    ],
)
def test_environment_errors_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as raised:
        provisioning_from_environment({**REFERENCE, variable: value})
    assert "\n" not in str(raised.value)
    assert PREFIX in str(raised.value)


AUTH_FILE = {
    "certificates_list": [
        {"Cn": "alice-cn", "Fingerprint": "ab12", "Username": "alice"},
        {"Cn": "any-cn", "Fingerprint": None, "Username": "bob"},
        {"Cn": "lb", "Username": "bob"},
    ],
    "users_list": [
        {"Username": "alice", "Roles": ["Submitter", "Admin"]},
        {"Username": "bob", "Roles": ["Monitoring"]},
    ],
    "roles_list": [{"RoleName": "Admin", "Permissions": ["General:Impersonate:Monitoring"]}],
}

EXPECTED = Provisioning(
    roles=(
        RoleSpec("Submitter", PERMISSIONS),
        RoleSpec("Monitoring", MONITORING_PERMISSIONS),
        RoleSpec("Admin", ("General:Impersonate:Monitoring",)),
    ),
    users=(UserSpec("alice", ("Submitter", "Admin")), UserSpec("bob", ("Monitoring",))),
    certificates=(
        CertificateSpec("alice", "alice-cn", "ab12"),
        CertificateSpec("bob", "any-cn", None),
        CertificateSpec("bob", "lb", None),
    ),
)


def test_auth_file_in_json_and_yaml(tmp_path: Path) -> None:
    import yaml

    as_json = tmp_path / "auth.json"
    as_json.write_text(json.dumps(AUTH_FILE))
    as_yaml = tmp_path / "auth.yaml"
    as_yaml.write_text(yaml.safe_dump(AUTH_FILE))
    assert provisioning_from_file(as_json) == EXPECTED
    assert provisioning_from_file(as_yaml) == EXPECTED


def test_auth_file_role_replaces_a_builtin_one_and_lists_may_be_absent(tmp_path: Path) -> None:
    path = tmp_path / "auth.yml"
    path.write_text(
        "roles_list:\n  - RoleName: Monitoring\n    Permissions: [Versions:ListVersions]\n"
    )
    provisioning = provisioning_from_file(path)
    assert provisioning.roles == (
        RoleSpec("Submitter", PERMISSIONS),
        RoleSpec("Monitoring", ("Versions:ListVersions",)),
    )
    assert provisioning.users == provisioning.certificates == ()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert len(provisioning_from_file(empty).roles) == 2


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("auth.json", "{broken", "not valid JSON"),
        ("auth.yaml", "a: [b\nc: d", "not valid YAML"),
        ("auth.yaml", "- 1\n- 2", "expected a mapping"),
        ("auth.yaml", "user_list: []", "unknown key 'user_list'"),
        ("auth.yaml", "users_list: {a: 1}", "users_list must be a list of mappings"),
        ("auth.yaml", "users_list: [{Roles: []}]", "'Username' is missing"),
        ("auth.yaml", "users_list: [{Username: u}]", "'Roles' is missing"),
        ("auth.yaml", "users_list: [{Username: u, Roles: [Nope]}]", "unknown role 'Nope'"),
        ("auth.yaml", "roles_list: [{RoleName: R, Permissions: [x]}]", "permission 'x'"),
        ("auth.yaml", "certificates_list: [{Cn: c, Username: ghost}]", "unknown user 'ghost'"),
        ("auth.yaml", "certificates_list: [{Fingerprint: f, Username: u}]", "'Cn' is missing"),
    ],
)
def test_auth_file_errors_name_the_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=message) as raised:
        provisioning_from_file(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert "\n" not in str(raised.value)


def test_unreadable_auth_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read the auth file") as raised:
        provisioning_from_file(tmp_path / "missing.yaml")
    assert str(tmp_path / "missing.yaml") in str(raised.value)
