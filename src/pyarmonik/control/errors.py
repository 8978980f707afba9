"""The one place where domain errors become gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from pyarmonik.domain.errors import (
    ArmoniKError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

log = logging.getLogger(__name__)

CODES: dict[type[ArmoniKError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_code(error: ArmoniKError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in CODES:
            return CODES[kind]
    return grpc.StatusCode.UNKNOWN


F = TypeVar("F", bound=Callable[..., Any])


def rpc(method: F) -> F:
    """Wrap a servicer method (unary or streaming) so that domain errors abort the call with
    their status code and anything unexpected with INTERNAL (logged, never a crash)."""

    async def fail(context: grpc.aio.ServicerContext, error: Exception) -> None:
        if isinstance(error, ArmoniKError):
            await context.abort(status_code(error), str(error))
        log.exception("rpc %s failed", method.__qualname__, exc_info=error)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {error!r}")

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(
            self: Any, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                async for reply in method(self, request, context):
                    yield reply
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as error:
                await fail(context, error)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await fail(context, error)

    return unary  # type: ignore[return-value]
