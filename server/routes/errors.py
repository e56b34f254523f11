"""The one map from ``ServingError`` (and FastAPI's own errors) to HTTP responses.

Native routes answer ``{"error": {"code", "message", "status"}}``; the status comes from the
error's class, so the pipeline never names an HTTP status. Under ``/v2`` every failure is the
Open Inference Protocol's ``{"error": "<message>"}`` with its statuses (server/v2/errors.py).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from server import errors
from server.routes.native import client_closed
from server.v2 import rest
from server.v2.errors import V2Error, from_serving_error

log = logging.getLogger("server.routes")

HTTP_STATUS: dict[type[errors.ServingError], int] = {
    errors.InvalidInput: 400,
    errors.Unauthorized: 401,
    errors.NotFound: 404,
    errors.TooLarge: 413,
    errors.UnsupportedMedia: 415,
    errors.InvalidParameter: 422,
    errors.Internal: 500,
    errors.Unavailable: 503,
    errors.DeadlineExceeded: 504,
}


def http_status(error: errors.ServingError) -> int:
    return next(status for kind, status in HTTP_STATUS.items() if isinstance(error, kind))


def error_body(code: str, message: str, status: int) -> dict:
    return {"error": {"code": code, "message": message, "status": status}}


def error_response(error: errors.ServingError, path: str = "") -> Response:
    if is_v2(path):
        return v2_response(from_serving_error(error))
    status = http_status(error)
    headers = {} if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}
    return JSONResponse(error_body(error.code, error.message, status), status, headers=headers)


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def v2_response(error: V2Error) -> Response:
    content, headers = rest.encode_error(error)
    return Response(content, error.status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ServingError)
    async def serving_error(request: Request, error: errors.ServingError) -> Response:
        return error_response(error, request.url.path)

    @app.exception_handler(V2Error)
    async def protocol_error(request: Request, error: V2Error) -> Response:
        return v2_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in error.errors() if e.get("loc"))
        if is_v2(request.url.path):
            return v2_response(V2Error(400, problems))
        return JSONResponse(error_body("invalid_parameter", problems, 422), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {error.detail}"
        if is_v2(request.url.path):
            return v2_response(V2Error(error.status_code, message, error.headers))
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        body = error_body(code, message, error.status_code)
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, error: ClientDisconnect) -> Response:
        """A client gone while any route read its body: recorded (499, or 408 past the body's
        deadline), never answered, no traceback; /predict and V2 infer catch it themselves."""
        return client_closed(request)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        message = "unexpected server error; it has been logged"
        if is_v2(request.url.path):
            return v2_response(V2Error(500, message))
        return JSONResponse(error_body("internal_error", message, 500), status_code=500)
