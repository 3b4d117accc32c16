"""The server's exceptions and the one place that maps them to gRPC status codes.

Every error a client can cause names what was wrong, what was expected and what
was received, so a load test's failure log says why without a debugger.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base of the errors a request can end in; `code` is the gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """Bad shape, datatype, byte size, missing or unknown tensor, bad parameter."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServingError):
    """Unknown model name or version."""

    code = grpc.StatusCode.NOT_FOUND


class ModelNotReady(ServingError):
    """The model exists but is not loaded (unloaded, or failed to load)."""

    code = grpc.StatusCode.UNAVAILABLE


class QueueFull(ServingError):
    """The model's queue holds max_queue_size requests already.

    RESOURCE_EXHAUSTED rather than UNAVAILABLE: the server is alive and says it
    is overloaded, which is what a load test must see and count; gRPC clients
    and proxies with retry policies retry UNAVAILABLE automatically, which
    would hide the overload and add load exactly when the server has no room.
    It is also the status gRPC itself uses when max_concurrent_rpcs is hit.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    """The request's deadline passed while it waited in the queue."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ShuttingDown(ServingError):
    """The server is draining after SIGTERM and takes no new requests."""

    code = grpc.StatusCode.UNAVAILABLE


class ExecutionFailed(ServingError):
    """The framework raised while running the model."""

    code = grpc.StatusCode.INTERNAL


def abort_with(context: grpc.ServicerContext, error: ServingError) -> None:
    """End the RPC with the error's status; raises (grpc's abort never returns)."""
    context.abort(error.code, error.message)


def status_name(code: grpc.StatusCode) -> str:
    """'INVALID_ARGUMENT' for grpc.StatusCode.INVALID_ARGUMENT."""
    return str(code.name)
