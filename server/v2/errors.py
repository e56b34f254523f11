"""The Open Inference Protocol's one error shape, ``{"error": "<message>"}``, with its status.

Plain exceptions: the wire functions of this package raise them, and the front doors (REST,
gRPC) turn them into responses in one place each. Statuses are those Triton and KServe use:
400 bad request, 404 unknown model or version, 413 too large, 415 unsupported media type or
content encoding, 503 not ready or queue full (with ``Retry-After``), 504 past the deadline.
"""

from __future__ import annotations

from typing import Any

from server import errors

# gRPC has no HTTP statuses: each one's closest gRPC code, by name (``grpc.StatusCode[name]``),
# so that this module needs no grpcio.
GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    429: "UNAVAILABLE",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class V2Error(Exception):
    """A failed protocol request: ``status`` and a message the client can act on."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": self.message}

    @property
    def grpc_code(self) -> str:
        """The name of this error's ``grpc.StatusCode``."""
        return GRPC_CODES.get(self.status, "UNKNOWN" if self.status < 500 else "INTERNAL")


def bad_request(message: str) -> V2Error:
    return V2Error(400, message)


def not_found(message: str) -> V2Error:
    return V2Error(404, message)


def unavailable(message: str, retry_after_s: int = 1) -> V2Error:
    return V2Error(503, message, {"Retry-After": str(retry_after_s)})


# The request path's errors (server/errors.py) by class: as /predict's, except that the
# protocol has no 422: a request the model cannot serve as asked is a 400, as in Triton and KServe.
STATUS: dict[type[errors.ServingError], int] = {
    errors.InvalidInput: 400,
    errors.InvalidParameter: 400,
    errors.Unauthorized: 401,
    errors.NotFound: 404,
    errors.TooLarge: 413,
    errors.UnsupportedMedia: 415,
    errors.Internal: 500,
    errors.Unavailable: 503,
    errors.DeadlineExceeded: 504,
}


def from_serving_error(error: Exception) -> V2Error | None:
    """A ``ServingError`` of the request path in the protocol's terms (``Retry-After`` kept);
    ``None`` for anything else (a bug: the front door's own 500)."""
    if not isinstance(error, errors.ServingError):
        return None
    status = next(s for kind, s in STATUS.items() if isinstance(error, kind))
    retry = {} if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}
    return V2Error(status, error.message, retry)
