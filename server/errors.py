"""The server's exceptions and the one place that maps them to gRPC and HTTP status.

Every error a client can cause names what was wrong, what was expected and what
was received, so a load test's failure log says why without a debugger. The
transports (server/kserve.py, server/torchserve.py, server/http.py) never pick a
status code themselves: they ask `grpc_code` / `http_status` here.
"""

from __future__ import annotations

from typing import NoReturn

import grpc


class ServingError(Exception):
    """Base of the errors a request can end in (INTERNAL unless a subclass says)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    """Bad shape, datatype, byte size, missing or unknown tensor, bad parameter."""


class ModelNotFound(ServingError):
    """Unknown model name or version."""


class ModelNotReady(ServingError):
    """The model exists but is not loaded (unloaded, or failed to load)."""


class QueueFull(ServingError):
    """The model's queue holds max_queue_size requests already.

    RESOURCE_EXHAUSTED rather than UNAVAILABLE: the server is alive and says it
    is overloaded, which is what a load test must see and count; gRPC clients
    and proxies with retry policies retry UNAVAILABLE automatically, which
    would hide the overload and add load exactly when the server has no room.
    It is also the status gRPC itself uses when max_concurrent_rpcs is hit.
    """


class DeadlineExceeded(ServingError):
    """The request's deadline passed while it waited in the queue."""


class ShuttingDown(ServingError):
    """The server is draining after SIGTERM and takes no new requests."""


class ExecutionFailed(ServingError):
    """The framework raised while running the model."""


class LoadFailed(ServingError):
    """A model could not be (re)loaded on request (RepositoryModelLoad)."""


class AdminDisabled(ServingError):
    """An admin action (profiling, repository control) the server was not started
    to allow. FAILED_PRECONDITION: no credential helps, only a restart with the
    flag the message names (Triton answers its own model-control refusal with
    UNAVAILABLE, which clients retry; a refusal must not be retried)."""


class Unauthenticated(ServingError):
    """An admin action without the bearer token, or with another one."""


class AlreadyProfiling(ServingError):
    """The model has a profile recording; one job per model at a time."""


class NoSuchJob(ServingError):
    """No profile is recording for the model named."""


_StatusCode = grpc.StatusCode
# Error class -> (gRPC status, HTTP status). The HTTP codes follow KServe's v2 REST
# mapping of the same conditions.
_STATUS: dict[type[ServingError], tuple[grpc.StatusCode, int]] = {
    ServingError: (_StatusCode.INTERNAL, 500),
    InvalidInput: (_StatusCode.INVALID_ARGUMENT, 400),
    ModelNotFound: (_StatusCode.NOT_FOUND, 404),
    ModelNotReady: (_StatusCode.UNAVAILABLE, 503),
    QueueFull: (_StatusCode.RESOURCE_EXHAUSTED, 429),
    DeadlineExceeded: (_StatusCode.DEADLINE_EXCEEDED, 504),
    ShuttingDown: (_StatusCode.UNAVAILABLE, 503),
    ExecutionFailed: (_StatusCode.INTERNAL, 500),
    LoadFailed: (_StatusCode.INTERNAL, 500),
    AdminDisabled: (_StatusCode.FAILED_PRECONDITION, 403),
    Unauthenticated: (_StatusCode.UNAUTHENTICATED, 401),
    AlreadyProfiling: (_StatusCode.ALREADY_EXISTS, 409),
    NoSuchJob: (_StatusCode.NOT_FOUND, 404),
}


def _status(error: ServingError) -> tuple[grpc.StatusCode, int]:
    for cls in type(error).__mro__:
        found = _STATUS.get(cls)
        if found is not None:
            return found
    return _STATUS[ServingError]


def grpc_code(error: ServingError) -> grpc.StatusCode:
    """The gRPC status a request that ended in `error` gets."""
    return _status(error)[0]


def http_status(error: ServingError) -> int:
    """The HTTP status for `error` on the server's HTTP port."""
    return _status(error)[1]


def status_name(error: ServingError) -> str:
    """'INVALID_ARGUMENT' for an InvalidInput: the label statistics count it under."""
    return str(grpc_code(error).name)


def in_band(error: ServingError) -> str:
    """The error as streaming RPCs carry it inside a response: 'STATUS: message'."""
    return f"{status_name(error)}: {error.message}"


async def abort(context: grpc.aio.ServicerContext, error: ServingError) -> NoReturn:
    """End the RPC with the error's status and message (grpc's abort raises)."""
    await context.abort(grpc_code(error), error.message)
    raise AssertionError("unreachable: ServicerContext.abort raises")
