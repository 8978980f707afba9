"""Who calls the HTTP port (admin GUI, /api, /metrics), by the rules of the gRPC side
(control/auth.py): the client certificate our TLS verified (or, from a trusted proxy, the
certificate headers it sets), or a bearer token issued by `pyarmonik auth token` (a browser
without a certificate logs in with one).

With session isolation on, what a caller may see is narrowed by control/isolation.py's
`Visibility`, as for the gRPC servicers.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from pyarmonik.config import Settings
from pyarmonik.control.auth import Authenticator, Credentials, Unauthenticated
from pyarmonik.control.isolation import Visibility
from pyarmonik.domain.auth import ANONYMOUS, Identity

CERTIFICATE, TOKEN = "certificate", "token"


@dataclass(frozen=True)
class Caller:
    """An identified caller and how: `certificate`, `token`, or '' (authentication off)."""

    identity: Identity
    via: str = ""


# Where a request's caller is kept once identified (a handler may ask again).
CALLER_KEY = web.RequestKey("caller", Caller)


def peer_certificate(request: web.Request) -> tuple[str, str]:
    """CN and fingerprint of the client certificate our TLS verified ('', '' if none).

    The HTTP port asks for a certificate without requiring one (ssl.CERT_OPTIONAL): one that
    is presented is verified against the client CA, or the handshake fails."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return "", ""
    from pyarmonik.certificates import cn_and_fingerprint

    return cn_and_fingerprint(der)


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None without the header."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _connection(request: web.Request) -> str:
    """A key of the request's TCP connection (the identity cache is per connection)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"http:{peer[0]}:{peer[1]}"
    return f"http:{request.remote}"


class HttpAuth:
    """Identification and permission checks of HTTP requests."""

    def __init__(self, settings: Settings, authenticator: Authenticator | None):
        self.settings = settings
        self.authenticator = authenticator
        self.required = settings.require_authentication and authenticator is not None

    async def caller(self, request: web.Request) -> Caller:
        """The caller of `request`; Unauthenticated when authentication is on and it presents
        neither a known certificate nor a valid token. A bearer token, when sent, is the
        credential (a browser may hold a certificate and still log in as someone else)."""
        if not self.required or self.authenticator is None:
            return Caller(ANONYMOUS)
        if CALLER_KEY in request:
            return request[CALLER_KEY]
        authenticator = self.authenticator
        token = bearer_token(request)
        if token is not None:
            caller = Caller(await authenticator.identify_token(token), TOKEN)
        else:
            caller = Caller(await authenticator.identify(*self._credentials(request)), CERTIFICATE)
        request[CALLER_KEY] = caller
        return caller

    def _credentials(self, request: web.Request) -> tuple[str, Credentials]:
        """(connection, credentials): the verified certificate, or the certificate headers
        of a trusted proxy; and the impersonation headers (as on the gRPC side)."""
        settings = self.settings
        headers = request.headers
        cn, fingerprint = self.certificate(request)
        if not cn and not fingerprint:
            raise Unauthenticated("No client certificate nor bearer token: log in")
        credentials = Credentials(
            cn,
            fingerprint,
            headers.get(settings.impersonation_id_header, "").strip(),
            headers.get(settings.impersonation_username_header, "").strip(),
        )
        return _connection(request), credentials

    def certificate(self, request: web.Request) -> tuple[str, str]:
        """CN and fingerprint of the caller's certificate: the one our TLS verified, or the
        certificate headers of a trusted proxy ('', '' without either)."""
        cn, fingerprint = peer_certificate(request)
        if self.authenticator is not None and self.authenticator.trusts_proxy(
            request.remote or "", cn
        ):
            header_cn = request.headers.get(self.settings.cn_header, "").strip()
            header_fingerprint = request.headers.get(self.settings.fingerprint_header, "").strip()
            if header_cn or header_fingerprint:
                return header_cn, header_fingerprint
        return cn, fingerprint

    async def check(self, request: web.Request, permission: str | None) -> Identity:
        """The caller's identity if it holds `permission` (as the matching rpc needs);
        Unauthenticated or PermissionDenied otherwise."""
        identity = (await self.caller(request)).identity
        if self.authenticator is not None:
            self.authenticator.authorize(identity, (permission,) if permission else ())
        return identity

    def visibility(self, identity: Identity) -> Visibility:
        """What session isolation lets `identity` see."""
        return Visibility.of(identity, self.settings) if self.required else Visibility(None)
