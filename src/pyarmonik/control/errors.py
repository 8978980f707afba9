"""The one place where domain errors become gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import logging
import re
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


# Status details travel in a trailer, which peers cap (8-16 KiB): a long id a client sent is
# quoted shortened, and the whole text bounded, so the answer keeps its status code.
_LONG_WORD = re.compile(r"[^\s,:;'\"()\[\]]{65,}")
MAX_DETAILS = 2000


def readable(details: str) -> str:
    """`details` with every word over 64 characters shortened, at most MAX_DETAILS long."""
    text = _LONG_WORD.sub(lambda m: f"{m.group()[:32]}…({len(m.group())} chars)", details)
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - 1] + "…"


def status_code(error: ArmoniKError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in CODES:
            return CODES[kind]
    return grpc.StatusCode.UNKNOWN


F = TypeVar("F", bound=Callable[..., Any])


def rpc(method: F) -> F:
    """Wrap a servicer method (unary or streaming) so that domain errors abort the call with
    their status code and anything unexpected with INTERNAL (logged, never a crash)."""

    def failure(error: Exception) -> tuple[grpc.StatusCode, str]:
        if isinstance(error, ArmoniKError):
            return status_code(error), readable(str(error))
        log.exception("rpc %s failed", method.__qualname__, exc_info=error)
        return grpc.StatusCode.INTERNAL, readable(f"internal error: {error!r}")

    # The call is aborted after its `except` block, not in it: gRPC keeps the AbortError of
    # recent calls, and one raised in the block would chain the error, its frames and the
    # whole request to it (tens of MiB kept alive after a large request).
    name = method.__name__
    seconds = RPC_SECONDS.labels(name)
    counters = {code: RPCS.labels(name, code.name) for code in grpc.StatusCode}

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(
            self: Any, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            start = time.perf_counter()
            code, details = grpc.StatusCode.OK, ""
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
                code, details = failure(error)
            finally:
                counters[code].inc()
                seconds.observe(time.perf_counter() - start)
            if code != grpc.StatusCode.OK:
                await context.abort(code, details)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        code, details = grpc.StatusCode.OK, ""
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as error:
            code, details = failure(error)
        finally:
            counters[code].inc()
            seconds.observe(time.perf_counter() - start)
        await context.abort(code, details)

    return unary  # type: ignore[return-value]
