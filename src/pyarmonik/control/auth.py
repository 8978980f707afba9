"""Who is calling, and may they: ArmoniK's authentication and authorization (reference:
armonik-auth.md §5) for the gRPC API, and the same identification for the HTTP side.

A caller is identified by its client certificate (CN and SHA-1 fingerprint), verified by our
own TLS (mutual TLS) or, behind a TLS-terminating proxy that is trusted, taken from the
headers the proxy sets. It may impersonate another user (`X-Impersonate-Id|-Username`) when
its roles allow. Each rpc then needs the permission named after it (`Service:Rpc`).
Identities are cached per connection for a few seconds only: a removed user or certificate
stops working within `identity_cache_seconds`.

The identity of the current call is in `current_identity()` for the servicers (session
isolation, the creator of a session).
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from pyarmonik.certificates import cn_and_fingerprint
from pyarmonik.config import Settings
from pyarmonik.domain.auth import ANONYMOUS, PERMISSIONS, Identity
from pyarmonik.domain.errors import ArmoniKError, PermissionDenied
from pyarmonik.scheduling.auth import AuthStore

log = logging.getLogger(__name__)


class Unauthenticated(ArmoniKError):
    """The caller could not be identified (UNAUTHENTICATED)."""


# gRPC service (full name) → the service part of its permissions.
PERMISSION_SERVICES = {
    "armonik.api.grpc.v1.submitter.Submitter": "Submitter",
    "armonik.api.grpc.v1.sessions.Sessions": "Sessions",
    "armonik.api.grpc.v1.tasks.Tasks": "Tasks",
    "armonik.api.grpc.v1.results.Results": "Results",
    "armonik.api.grpc.v1.applications.Applications": "Applications",
    "armonik.api.grpc.v1.events.Events": "Events",
    "armonik.api.grpc.v1.partitions.Partitions": "Partitions",
    "armonik.api.grpc.v1.versions.Versions": "Versions",
    "armonik.api.grpc.v1.health_checks.HealthChecksService": "HealthChecks",
    "pyarmonik.v1.Sdk": "Sdk",  # pyarmonik's own (control/sdk_service.py)
}
AUTHENTICATION_SERVICE = "armonik.api.grpc.v1.auth.Authentication"
# Rpcs ArmoniK does not serve, hence has no permission for: the permissions of the calls
# they stand for (all of them are needed).
SUBSTITUTES = {
    "Results:WatchResults": ("Results:GetResult",),
    "Submitter:WatchResults": ("Submitter:GetResultStatus",),
    "Sdk:Watch": ("Results:DownloadResultData",),
    "Sdk:Submit": (
        "Results:CreateResultsMetaData",
        "Results:CreateResults",
        "Tasks:SubmitTasks",
    ),
}

_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar("identity", default=ANONYMOUS)


def current_identity() -> Identity:
    """The identity the current call runs as (ANONYMOUS when authentication is off)."""
    return _identity.get()


def permissions_of(method: str) -> tuple[str, ...]:
    """The permissions an rpc needs (`/package.Service/Rpc` → `Service:Rpc`); none for
    GetCurrentUser (authentication only) and for methods of no ArmoniK service."""
    service, _, rpc = method.lstrip("/").partition("/")
    prefix = PERMISSION_SERVICES.get(service)
    if prefix is None:
        return ()
    permission = f"{prefix}:{rpc}"
    return SUBSTITUTES.get(permission, (permission,))


@dataclass(frozen=True)
class Credentials:
    """What a call presents: a certificate's CN and fingerprint (either may be empty), and
    the user it asks to impersonate."""

    cn: str = ""
    fingerprint: str = ""
    impersonate_id: str = ""
    impersonate_username: str = ""


class Authenticator:
    """Credentials → Identity, with ArmoniK's rules and a short per-connection cache."""

    def __init__(self, settings: Settings, store: AuthStore):
        self.settings = settings
        self.store = store
        self._cache: dict[tuple[str, Credentials], tuple[Identity, float]] = {}
        self._networks = [
            ipaddress.ip_network(a, strict=False) for a in settings.trusted_proxy_addresses
        ]

    def trusts_proxy(self, address: str, certificate_cn: str) -> bool:
        """Whether the peer is a proxy whose certificate headers are believed."""
        if certificate_cn and certificate_cn in self.settings.trusted_proxy_cns:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    async def identify(self, connection: str, credentials: Credentials) -> Identity:
        """The identity of a call on `connection`; Unauthenticated when there is none."""
        if not self.settings.require_authentication:
            return ANONYMOUS
        key = (connection, credentials)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        identity = await self._lookup(credentials)
        if len(self._cache) > 10_000:  # connections come and go: drop what expired
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
        self._cache[key] = (identity, now + self.settings.identity_cache_seconds)
        return identity

    async def identify_token(self, token: str) -> Identity:
        """The identity of a bearer token (HTTP side); Unauthenticated when unknown or
        revoked. Not cached: a revoked token stops working at once."""
        if not self.settings.require_authentication:
            return ANONYMOUS
        identity = await self.store.identity_of_token(token) if token else None
        if identity is None:
            raise Unauthenticated("Unknown or revoked token")
        return identity

    async def _lookup(self, credentials: Credentials) -> Identity:
        if not credentials.cn or not credentials.fingerprint:
            raise Unauthenticated("Missing client certificate")
        identity = await self.store.identity_of_certificate(credentials.cn, credentials.fingerprint)
        if identity is None:
            raise Unauthenticated("Unrecognized user certificate")
        if not (credentials.impersonate_id or credentials.impersonate_username):
            return identity
        if not identity.holds("General:Impersonate"):
            raise Unauthenticated("Given certificate cannot impersonate a user")
        user_id: int | None = None
        if credentials.impersonate_id:
            try:
                user_id = int(credentials.impersonate_id)
            except ValueError:
                raise Unauthenticated("The user id to impersonate is not an integer") from None
        target = await self.store.identity_of_user(
            user_id, credentials.impersonate_username or None
        )
        if target is None:
            raise Unauthenticated("The user to impersonate does not exist")
        if not identity.may_impersonate(target.roles):
            raise Unauthenticated(
                f"User {identity.username} has insufficient roles to impersonate {target.username}"
            )
        log.info("user %s impersonates %s", identity.username, target.username)
        return target

    def authorize(self, identity: Identity, permissions: tuple[str, ...]) -> None:
        """PermissionDenied unless `identity` may call an rpc needing `permissions`."""
        if not self.settings.require_authentication or not self.settings.require_authorization:
            return
        for permission in permissions:
            if not identity.holds(permission):
                raise PermissionDenied(
                    f"User {identity.username} lacks the permission {permission}"
                )

    def current_user(self, identity: Identity) -> tuple[str, list[str], list[str]]:
        """(username, roles, permissions) as GetCurrentUser answers them in each mode."""
        if not self.settings.require_authentication:
            return ANONYMOUS.username, [], list(PERMISSIONS)
        if not self.settings.require_authorization:
            return identity.username, [], list(PERMISSIONS)
        return identity.username, list(identity.roles), list(identity.permissions)


# -- the gRPC side ----------------------------------------------------------------------------


def _first(metadata: Sequence[tuple[str, Any]] | None, name: str) -> str:
    """The first non-blank value of a metadata key (gRPC lower-cases keys)."""
    wanted = name.lower()
    for key, value in metadata or ():
        if key == wanted and isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def peer_address(peer: str) -> str:
    """The address of a gRPC peer string (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`, `unix:...`)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


def _peer_certificate(context: grpc.aio.ServicerContext) -> tuple[str, str]:
    """CN and fingerprint of the client certificate our TLS verified ('', '' if none)."""
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        return "", ""
    return cn_and_fingerprint(pems[0])


# Set by the gRPC-Web gateway (control/grpcweb.py) on the calls it relays: with the right
# value, the certificate headers are the ones the HTTP port verified.
GATEWAY_HEADER = "x-pyarmonik-gateway"


def from_gateway(metadata: Sequence[tuple[str, str | bytes]] | None, secret: str) -> bool:
    """Whether a call's metadata carries the gateway's secret."""
    if not secret or not metadata:
        return False
    for key, value in metadata:
        if key == GATEWAY_HEADER and isinstance(value, str):
            return hmac.compare_digest(value, secret)
    return False


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates and authorizes every call of the ArmoniK services, then runs it with
    its identity in `current_identity()`."""

    def __init__(self, authenticator: Authenticator, gateway_secret: str = ""):
        self.authenticator = authenticator
        # The gRPC-Web gateway (control/grpcweb.py) relays the certificate it verified.
        self.gateway_secret = gateway_secret

    def credentials(self, context: grpc.aio.ServicerContext) -> tuple[str, Credentials]:
        """(connection, credentials) of a call: its own certificate, or the certificate
        headers when it comes from a trusted proxy; and the impersonation headers."""
        settings = self.authenticator.settings
        metadata = context.invocation_metadata()
        peer = context.peer()
        cn, fingerprint = _peer_certificate(context)
        if from_gateway(metadata, self.gateway_secret) or self.authenticator.trusts_proxy(
            peer_address(peer), cn
        ):
            header_cn = _first(metadata, settings.cn_header)
            header_fingerprint = _first(metadata, settings.fingerprint_header)
            if header_cn or header_fingerprint:
                cn, fingerprint = header_cn, header_fingerprint
        impersonate_id = _first(metadata, settings.impersonation_id_header)
        impersonate_username = _first(metadata, settings.impersonation_username_header)
        return peer, Credentials(cn, fingerprint, impersonate_id, impersonate_username)

    async def _admit(self, context: grpc.aio.ServicerContext, method: str) -> Identity:
        """The caller's identity, or the call aborted (UNAUTHENTICATED / PERMISSION_DENIED)."""
        code, details = grpc.StatusCode.UNAVAILABLE, ""
        try:
            identity = await self.authenticator.identify(*self.credentials(context))
            self.authenticator.authorize(identity, permissions_of(method))
            return identity
        except Unauthenticated as error:
            code, details = grpc.StatusCode.UNAUTHENTICATED, str(error)
        except PermissionDenied as error:
            code, details = grpc.StatusCode.PERMISSION_DENIED, str(error)
        except ArmoniKError as error:  # the identity store is down
            details = str(error)
        await context.abort(code, details)  # after the except block: nothing chained to it
        raise AssertionError("abort raises")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        service = method.lstrip("/").partition("/")[0]
        if handler is None or (
            service not in PERMISSION_SERVICES and service != AUTHENTICATION_SERVICE
        ):
            return handler
        admit = self._admit

        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _identity.set(await admit(context, method))
                return await inner(request, context)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(unary, handler.request_deserializer, handler.response_serializer)

        inner_stream = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _identity.set(await admit(context, method))
            async for reply in inner_stream(request, context):
                yield reply

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(streaming, handler.request_deserializer, handler.response_serializer)
