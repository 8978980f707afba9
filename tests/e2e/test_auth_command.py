"""`pyarmonik auth ...` as a user runs it: a CA, certificates the official client loads,
users, roles, tokens and provisioning in the database of a data dir, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12


def auth(
    data_dir: Path, *args: str | Path, database: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pyarmonik.cli.main", "auth", *map(str, args)]
    if database:
        command += ["--data-dir", str(data_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one line an error prints, checked: exit code 2, `error: `, the words given."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


def openssl_fingerprint(path: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-fingerprint", "-sha1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().split("=", 1)[1].replace(":", "").lower()


def test_ca_issue_and_the_official_client_loads_the_files(tmp_path: Path) -> None:
    from armonik.common import create_channel
    from armonik.common.channel import _load_certificates

    data, out = tmp_path / "data", tmp_path / "certs"
    ok(auth(data, "ca", "--out", out, "--cn", "Test CA", "--days", "30", database=False))
    ca_cert, ca_key = out / "ca.crt", out / "ca.key"
    assert (ca_key.stat().st_mode & 0o777) == 0o600
    ok(
        auth(
            data,
            "issue",
            "alice",
            "--ca-cert",
            ca_cert,
            "--ca-key",
            ca_key,
            "--out",
            out,
            "--role",
            "Submitter",
            "--days",
            "7",
        )
    )
    crt, key, p12 = (out / f"alice.{suffix}" for suffix in ("crt", "key", "p12"))

    # PEM certificate and key belong together and are signed by the CA.
    certificate = x509.load_pem_x509_certificate(crt.read_bytes())
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert certificate.public_key().public_numbers() == private.public_key().public_numbers()  # type: ignore[union-attr]
    assert certificate.subject.rfc4514_string() == "CN=alice"
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_cert), str(crt)], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    # The PKCS#12 has an empty password, as create_channel reads it without a key.
    loaded = pkcs12.load_pkcs12(p12.read_bytes(), b"")
    assert loaded.cert is not None and loaded.cert.certificate == certificate
    authority, chain, pem_key = _load_certificates(ca_cert, p12, None)
    assert chain == crt.read_bytes() and b"PRIVATE KEY" in pem_key
    assert authority == ca_cert.read_bytes()
    for client_certificate, client_key in ((p12, None), (crt, key)):
        channel = create_channel(
            "https://127.0.0.1:1",
            certificate_authority=ca_cert,
            client_certificate=client_certificate,
            client_key=client_key,
        )
        channel.close()

    # The certificate is registered for alice with openssl's fingerprint.
    listed = json.loads(ok(auth(data, "certificates", "-o", "json")))
    assert listed == [
        {
            "auth_id": 0,
            "username": "alice",
            "user_id": 0,
            "cn": "alice",
            "fingerprint": openssl_fingerprint(crt),
        }
    ]
    users = json.loads(ok(auth(data, "users", "-o", "json")))
    assert users == [{"user_id": 0, "username": "alice", "roles": ["Submitter"]}]

    # Another certificate for the same user with another CN; existing files are not overwritten.
    failed(
        auth(data, "issue", "alice", "--ca-cert", ca_cert, "--ca-key", ca_key, "--out", out),
        str(crt),
        "--force",
    )
    ok(
        auth(
            data,
            "issue",
            "alice",
            "--ca-cert",
            ca_cert,
            "--ca-key",
            ca_key,
            "--out",
            out,
            "--cn",
            "alice-laptop",
            "--force",
        )
    )
    assert [c["cn"] for c in json.loads(ok(auth(data, "certificates", "-o", "json")))] == [
        "alice",
        "alice-laptop",
    ]

    # A server certificate for the usual local names.
    ok(
        auth(
            data,
            "server-cert",
            "--ca-cert",
            ca_cert,
            "--ca-key",
            ca_key,
            "--out",
            out,
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
            database=False,
        )
    )
    server = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_cert), str(out / "server.crt")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr


def test_users_roles_certificates_tokens(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(
        auth(
            data,
            "add-role",
            "Admin",
            "--permission",
            "General:Impersonate",
            "--permission",
            "General:Impersonate:Monitoring",
        )
    )
    roles = json.loads(ok(auth(data, "roles", "-o", "json")))
    assert [r["name"] for r in roles] == ["Monitoring", "Submitter", "Admin"]  # built-ins first
    assert len(roles[1]["permissions"]) == 49 and len(roles[0]["permissions"]) == 23
    ok(auth(data, "add-user", "bob", "--role", "Monitoring", "--role", "Admin"))
    ok(auth(data, "set-roles", "bob", "--role", "Submitter"))
    assert "Submitter" in ok(auth(data, "users"))
    ok(auth(data, "add-certificate", "bob", "--cn", "bob-cn", "--fingerprint", "AB:CD"))
    ok(auth(data, "add-certificate", "bob", "--cn", "bob-any"))
    import yaml

    listed = yaml.safe_load(ok(auth(data, "certificates", "-o", "yaml")))
    assert [(c["cn"], c["fingerprint"]) for c in listed] == [("bob-cn", "abcd"), ("bob-any", None)]
    ok(auth(data, "remove-certificate", "--cn", "bob-cn", "--fingerprint", "abcd"))
    ok(auth(data, "remove-certificate", "--cn", "bob-any"))
    assert json.loads(ok(auth(data, "certificates", "-o", "json"))) == []

    issued = auth(data, "token", "bob", "--name", "laptop")
    secret = ok(issued).strip()
    assert secret.startswith("pyak_") and "laptop" in issued.stderr
    tokens = json.loads(ok(auth(data, "tokens", "-o", "json")))
    assert [(t["name"], t["username"]) for t in tokens] == [("laptop", "bob")]
    assert secret not in json.dumps(tokens)
    ok(auth(data, "revoke-token", "laptop"))
    failed(auth(data, "revoke-token", "laptop"), "'laptop'")
    ok(auth(data, "remove-role", "Admin"))
    ok(auth(data, "remove-user", "bob"))
    assert json.loads(ok(auth(data, "users", "-o", "json"))) == []


def test_provision_an_armonik_auth_file(tmp_path: Path) -> None:
    data, path = tmp_path / "data", tmp_path / "auth.json"
    path.write_text(
        json.dumps(
            {
                "certificates_list": [{"Cn": "mon", "Fingerprint": None, "Username": "monitoring"}],
                "users_list": [
                    {"Username": "submitter", "Roles": ["Submitter"]},
                    {"Username": "monitoring", "Roles": ["Monitoring"]},
                ],
                "roles_list": [],
            }
        )
    )
    ok(auth(data, "provision", "--auth-file", path))
    ok(auth(data, "provision", "--auth-file", path))  # idempotent
    users = json.loads(ok(auth(data, "users", "-o", "json")))
    assert users == [
        {"user_id": 0, "username": "monitoring", "roles": ["Monitoring"]},
        {"user_id": 1, "username": "submitter", "roles": ["Submitter"]},
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("users_list: [{Username: x, Roles: [Nope]}]\n")
    failed(auth(data, "provision", "--auth-file", bad), str(bad), "unknown role 'Nope'")
    failed(auth(data, "provision", "--auth-file", tmp_path / "none.yaml"), "none.yaml")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("remove-user", "ghost"), ("unknown user 'ghost'",)),
        (("remove-role", "ghost"), ("unknown role 'ghost'",)),
        (("add-user", "u", "--role", "Nope"), ("unknown role 'Nope'",)),
        (("add-role", "R", "--permission", "Tasks"), ("permission 'Tasks'",)),
        (("add-certificate", "ghost", "--cn", "c"), ("unknown user 'ghost'",)),
        (("add-certificate", "u"), ("--cert", "--cn")),
        (("token", "ghost"), ("unknown user 'ghost'",)),
    ],
)
def test_errors_are_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    failed(auth(tmp_path / "data", *args), *words)


def test_certificate_file_errors(tmp_path: Path) -> None:
    data, out, other = tmp_path / "data", tmp_path / "ca", tmp_path / "other"
    ok(auth(data, "ca", "--out", out, database=False))
    ok(auth(data, "ca", "--out", other, database=False))
    failed(auth(data, "ca", "--out", out, database=False), str(out / "ca.crt"), "exists")
    # A CA key that is not the CA certificate's.
    failed(
        auth(
            data,
            "issue",
            "u",
            "--ca-cert",
            out / "ca.crt",
            "--ca-key",
            other / "ca.key",
            "--out",
            tmp_path / "issued",
        ),
        "does not match",
    )
    assert not (tmp_path / "issued").exists()
    assert json.loads(ok(auth(data, "users", "-o", "json"))) == []  # nothing registered
    # Unreadable and unparsable files.
    failed(
        auth(
            data,
            "server-cert",
            "--ca-cert",
            tmp_path / "missing.crt",
            "--ca-key",
            out / "ca.key",
            "--out",
            tmp_path,
            database=False,
        ),
        "missing.crt",
    )
    failed(
        auth(
            data,
            "server-cert",
            "--ca-cert",
            out / "ca.key",
            "--ca-key",
            out / "ca.key",
            "--out",
            tmp_path,
            database=False,
        ),
        "CA certificate",
    )
    garbage = tmp_path / "garbage.crt"
    garbage.write_bytes(b"not a certificate")
    failed(auth(data, "add-certificate", "u", "--cert", garbage), str(garbage))
