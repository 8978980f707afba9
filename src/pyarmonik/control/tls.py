"""The control plane's TLS files, checked once at start: a certificate that cannot be read, a
key that does not match it or a client CA that is no certificate stops the start with one
line naming the file and the problem."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pyarmonik.config import Settings
from pyarmonik.domain.errors import InvalidArgument


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes of the server's certificate chain and key, and of the client CA (mutual TLS
    when set)."""

    cert_path: Path
    key_path: Path
    client_ca_path: Path | None
    cert: bytes
    key: bytes
    client_ca: bytes | None

    @staticmethod
    def of(settings: Settings) -> TlsFiles | None:
        """The files of `settings`, checked; None when TLS is off."""
        if settings.tls_cert is None and settings.tls_key is None:
            if settings.tls_client_ca is not None:
                raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if settings.tls_cert is None or settings.tls_key is None:
            raise InvalidArgument("TLS needs both --tls-cert and --tls-key")
        cert = _read(settings.tls_cert)
        key = _read(settings.tls_key)
        try:
            chain = x509.load_pem_x509_certificates(cert)
        except ValueError as error:
            raise InvalidArgument(f"{settings.tls_cert}: not a PEM certificate ({error})") from None
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as error:
            raise InvalidArgument(
                f"{settings.tls_key}: not an unencrypted PEM private key ({error})"
            ) from None
        if private.public_key().public_numbers() != chain[0].public_key().public_numbers():  # type: ignore[union-attr]
            raise InvalidArgument(
                f"{settings.tls_key}: the key does not match the certificate {settings.tls_cert}"
            )
        client_ca = None
        if settings.tls_client_ca is not None:
            client_ca = _read(settings.tls_client_ca)
            try:
                x509.load_pem_x509_certificates(client_ca)
            except ValueError as error:
                raise InvalidArgument(
                    f"{settings.tls_client_ca}: not a PEM certificate ({error})"
                ) from None
        return TlsFiles(
            settings.tls_cert, settings.tls_key, settings.tls_client_ca, cert, key, client_ca
        )

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server TLS; with a client CA, a client certificate signed by it is required."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """Server TLS for HTTP; with a client CA, a client certificate is asked for but not
        required (a browser without one logs in with a token)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        if self.client_ca is not None:
            context.load_verify_locations(cadata=self.client_ca.decode())
            context.verify_mode = ssl.CERT_OPTIONAL
        return context


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidArgument(f"{path}: cannot read it ({error.strerror})") from None
