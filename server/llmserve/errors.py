"""Errors the server raises on purpose, and the one place that maps any exception to a status."""

import asyncio
import logging

import grpc

logger = logging.getLogger(__name__)


class LlmServeError(Exception):
    """An error with a known gRPC status; its message is safe to show to the client."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgumentError(LlmServeError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, rule: str):
        super().__init__(f"{field}: {rule}")
        self.field = field


class ResourceExhaustedError(LlmServeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class AdmissionRejectedError(ResourceExhaustedError):
    """The server already holds --max-queued-requests requests."""

    def __init__(self, limit: int):
        super().__init__(f"the server is at its limit of {limit} queued requests; retry later")


class UnavailableError(LlmServeError):
    code = grpc.StatusCode.UNAVAILABLE


class EngineDeadError(UnavailableError):
    """The engine can no longer generate; the server must be restarted."""

    def __init__(self, detail: str = "the inference engine has stopped"):
        super().__init__(detail)


class DeadlineExceededError(LlmServeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self, detail: str = "deadline exceeded; the request was aborted"):
        super().__init__(detail)


class ClientGoneError(LlmServeError):
    """The client cancelled or disconnected; nothing more reaches it."""

    code = grpc.StatusCode.CANCELLED


class UnauthenticatedError(LlmServeError):
    code = grpc.StatusCode.UNAUTHENTICATED


def status_for(exc: BaseException, request_id: str) -> tuple[grpc.StatusCode, str]:
    """Maps an exception to the status code and message the client sees.

    Unexpected exceptions become INTERNAL with the request id (the traceback goes to the log).
    """
    if isinstance(exc, LlmServeError):
        return exc.code, str(exc)
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "request cancelled"
    logger.error("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request_id={request_id})"
