"""Domain errors. Each maps to exactly one gRPC status code, in control/errors.py."""

from __future__ import annotations


class ArmoniKError(Exception):
    """Base of every error a client can cause or observe."""


class NotFound(ArmoniKError):
    """An id (session, task, result, partition, object) does not exist."""


class InvalidArgument(ArmoniKError):
    """The request is malformed or a value is out of range."""


class FailedPrecondition(ArmoniKError):
    """The request is well formed but the current state forbids it."""


class PermissionDenied(ArmoniKError):
    """The caller lacks the permission for this rpc."""


class Unavailable(ArmoniKError):
    """A backend or the service itself cannot answer now; retrying may help."""
