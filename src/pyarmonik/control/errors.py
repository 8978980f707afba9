"""The one place where domain errors become gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import logging
import time
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
from pyarmonik.observability.metrics import RPC_SECONDS, RPCS

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

    name = method.__name__
    seconds = RPC_SECONDS.labels(name)
    counters = {code: RPCS.labels(name, code.name) for code in grpc.StatusCode}

    def count(code: grpc.StatusCode) -> None:
        counters[code].inc()

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(
            self: Any, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                async for reply in method(self, request, context):
                    yield reply
            except GeneratorExit:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as error:
                code = (
                    status_code(error)
                    if isinstance(error, ArmoniKError)
                    else grpc.StatusCode.INTERNAL
                )
                await fail(context, error)
            finally:
                count(code)
                seconds.observe(time.perf_counter() - start)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as error:
            code = (
                status_code(error) if isinstance(error, ArmoniKError) else grpc.StatusCode.INTERNAL
            )
            await fail(context, error)
        finally:
            count(code)
            seconds.observe(time.perf_counter() - start)

    return unary  # type: ignore[return-value]
