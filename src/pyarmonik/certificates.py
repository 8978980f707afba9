"""X.509 for pyarmonik's TLS: a certificate's identity as ArmoniK derives it (CN and the
lowercase hex SHA-1 of the DER bytes), and a small CA to issue server and client
certificates (`pyarmonik auth ca | server-cert | issue`).

Keys are RSA 2048 (every TLS stack and SDK of ArmoniK reads them); client certificates also
come as PKCS#12 with an empty password, like ArmoniK's generated ones, which the official
`armonik.common.create_channel` reads when given no key.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pyarmonik.domain.errors import InvalidArgument

KEY_SIZE = 2048
# Issued certificates start a little in the past: clocks of clients and servers differ.
BACKDATE = datetime.timedelta(minutes=5)


def load_certificate(data: bytes, what: str = "certificate") -> x509.Certificate:
    """A certificate from PEM (the first of the file) or DER bytes; InvalidArgument if neither."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise InvalidArgument(f"{what}: not a PEM or DER X.509 certificate ({error})") from None


def load_private_key(data: bytes, what: str = "key") -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key in PEM; InvalidArgument otherwise."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise InvalidArgument(f"{what}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidArgument(f"{what}: only RSA keys are supported")
    return key


@functools.lru_cache(maxsize=1024)
def cn_and_fingerprint(certificate: bytes) -> tuple[str, str]:
    """The CN of the subject (its first commonName, '' if none) and the fingerprint ArmoniK
    compares: lowercase hex SHA-1 of the DER bytes, no colons. Cached: with authentication
    on, every call presents its peer's certificate, and parsing it costs more than the call's
    identity lookup (itself cached)."""
    parsed = load_certificate(certificate)
    names = parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = names[0].value if names else ""
    return (cn if isinstance(cn, str) else cn.decode()), parsed.fingerprint(hashes.SHA1()).hex()


def make_ca(cn: str = "pyarmonik CA", days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed CA: (certificate PEM, key PEM)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    certificate = (
        _builder(name, name, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(certificate), _key_pem(key)


def issue_client_certificate(
    ca_cert_pem: bytes, ca_key_pem: bytes, cn: str, days: int = 365
) -> tuple[bytes, bytes, bytes]:
    """A client certificate for `cn`, signed by the CA: (certificate PEM, key PEM, PKCS#12
    with an empty password holding both and the CA)."""
    ca, ca_key = _ca(ca_cert_pem, ca_key_pem)
    key = _new_key()
    certificate = _leaf(ca, ca_key, key, cn, days, ExtendedKeyUsageOID.CLIENT_AUTH).sign(
        ca_key, hashes.SHA256()
    )
    p12 = pkcs12.serialize_key_and_certificates(
        cn.encode(), key, certificate, [ca], serialization.NoEncryption()
    )
    return _pem(certificate), _key_pem(key), p12


def issue_server_certificate(
    ca_cert_pem: bytes, ca_key_pem: bytes, hosts: list[str], days: int = 365
) -> tuple[bytes, bytes]:
    """A server certificate for these host names and IP addresses (subject alternative
    names; the CN is the first), signed by the CA: (certificate PEM, key PEM)."""
    if not hosts:
        raise InvalidArgument("a server certificate needs at least one host name or address")
    ca, ca_key = _ca(ca_cert_pem, ca_key_pem)
    key = _new_key()
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    certificate = (
        _leaf(ca, ca_key, key, hosts[0], days, ExtendedKeyUsageOID.SERVER_AUTH)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(certificate), _key_pem(key)


def _ca(ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    ca = load_certificate(ca_cert_pem, "CA certificate")
    key = load_private_key(ca_key_pem, "CA key")
    if _public_der(ca.public_key()) != _public_der(key.public_key()):
        raise InvalidArgument("the CA key does not match the CA certificate")
    return ca, key


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey, days: int
) -> x509.CertificateBuilder:
    if days < 1:
        raise InvalidArgument(f"validity of {days} days: must be at least 1")
    start = datetime.datetime.now(datetime.UTC) - BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(start)
        .not_valid_after(start + BACKDATE + datetime.timedelta(days=days))
    )


def _leaf(
    ca: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    key: rsa.RSAPrivateKey,
    cn: str,
    days: int,
    usage: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    if not cn:
        raise InvalidArgument("the certificate's CN is blank")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        _builder(subject, ca.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
