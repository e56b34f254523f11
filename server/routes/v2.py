"""The Open Inference Protocol's REST front door (KServe V2; docs/api_v2.md), on the same port
as ``/predict``: health, server and model metadata, and inference with JSON tensors or the
binary tensor data extension.

It only translates: ``server/v2/rest.py`` parses the body, ``server/v2/interface.py`` checks it
against the model and builds the response, ``server/v2/serving.py`` runs it through the one
request path. Errors under ``/v2`` are the protocol's ``{"error": "..."}`` (routes/errors.py).
"""

from __future__ import annotations

import asyncio
import functools
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from server.budget import Hold
from server.routes.body import client_gone, read_body
from server.routes.native import CLIENT_CLOSED, client_closed
from server.routes.ops import app_state, ready_state
from server.routes.responses import BudgetedResponse
from server.state import ServerState
from server.v2 import interface, openapi, rest, serving
from server.v2.tensors import WireRequest

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])
MODEL = "/models/{model_name}"
VERSION = "/models/{model_name}/versions/{model_version}"
INLINE_PARSE_BYTES = 1 << 16
"""Bodies up to this size are parsed on the event loop (a thread hand-off costs more); larger
ones, and every compressed one, in a thread: no request holds the loop for time that grows
with what it sends."""


@router.get(
    "",
    response_model=openapi.ServerMetadataResponse,
    responses=openapi.error_responses(401),
    summary="server metadata",
)
async def server_metadata() -> dict:
    return interface.server_metadata(serving.server_version())


@router.get("/health/live", response_model=openapi.LiveResponse, summary="liveness")
async def live() -> dict:
    return {"live": True}


@router.get(
    "/health/ready",
    response_model=openapi.ReadyResponse,
    responses={503: {"model": openapi.ReadyResponse}},
    summary="readiness",
)
async def ready(request: Request) -> JSONResponse:
    control = request.app.state.server
    is_ready = control is not None and control.ready
    return JSONResponse({"ready": is_ready}, 200 if is_ready else 503)


async def _metadata(request: Request, model_name: str, model_version: str) -> dict:
    control = app_state(request.app, need_warm=False)
    state = control.resolve(model_name, model_version)
    return interface.model_metadata(state.model, control.versions(model_name))


async def _ready(request: Request, model_name: str, model_version: str) -> JSONResponse:
    is_ready = app_state(request.app, need_warm=False).is_ready(model_name, model_version)
    return JSONResponse({"name": model_name, "ready": is_ready}, 200 if is_ready else 503)


def _model_routes(method: str, suffix: str, handler, summary: str, **documented) -> None:
    """``handler(request, name, version)`` on both of the protocol's paths for it: the model's
    (its highest version served), and one version's."""

    async def any_version(request: Request, model_name: str):
        return await handler(request, model_name, "")

    async def one_version(request: Request, model_name: str, model_version: str):
        return await handler(request, model_name, model_version)

    for path, endpoint, what in ((MODEL, any_version, ""), (VERSION, one_version, ", one version")):
        name = summary + what
        router.add_api_route(path + suffix, endpoint, methods=[method], summary=name, **documented)


async def _infer(request: Request, model_name: str, model_version: str) -> Response:
    arrived = time.monotonic()
    state = ready_state(request, model=model_name, version=model_version)
    # The body and what parsing it makes, reserved as they come, held until the maps are made.
    hold = state.budget.hold()
    try:
        try:
            wire = await _read_request(request, state, hold, model_name, model_version)
        except ClientDisconnect:  # as /predict: recorded, never answered
            return client_closed(request)
        checked = interface.infer_request(wire, state.model)
        del wire
        deadline = serving.deadline_for(state, checked, arrived)
        done = await serving.infer(
            state, checked, serving.REST_MAP_COPIES, deadline, lambda: client_gone(request)
        )
    finally:
        hold.release()
    if done is None:
        return Response(status_code=CLIENT_CLOSED)
    frames, reservation = done
    try:
        response = interface.infer_response(checked, state.model, frames)
        del frames  # the body below is their copy; the arrays go with the response object
        content, headers = rest.encode_response(response)
    except BaseException:
        reservation.release()
        raise
    reservation.shrink_to(len(content))  # the body is what the response holds from here on
    return BudgetedResponse(content, headers=headers, reservation=reservation)


async def _read_request(
    request: Request, state: ServerState, hold: Hold, model_name: str, model_version: str
) -> WireRequest:
    """The body, read within the limits, inflated and parsed off the event loop when large,
    each input checked against the model's before its data is read (interface.check_input)."""
    limit = state.settings.max_body_bytes
    headers = {key.lower(): value for key, value in request.headers.items()}
    rest.check_content_type(headers.get("content-type", ""))
    body = await read_body(request, limit, hold)
    encoding = headers.pop("content-encoding", "")
    if rest.is_encoded(encoding):
        if rest.HEADER_LENGTH.lower() in headers:  # its inputs checked before the rest inflates
            prefix = rest.json_length(headers, limit)
            check = interface.check_input
            await asyncio.to_thread(rest.check_inputs_first, body, encoding, prefix, check)
        hold.grow_to(hold.nbytes + limit)  # the inflated body, at most the limit
        body = await asyncio.to_thread(rest.decode_content, body, encoding, limit)
    json_length = rest.json_length(headers, len(body))
    hold.grow_to(hold.nbytes + rest.parse_bytes(len(body), json_length))
    parse = functools.partial(
        rest.parse_request, body, headers, model_name, model_version, limit, interface.check_input
    )
    if len(body) <= INLINE_PARSE_BYTES and not rest.is_encoded(encoding):
        return parse()
    return await asyncio.to_thread(parse)


_model_routes(
    "GET",
    "",
    _metadata,
    "model metadata",
    response_model=openapi.ModelMetadataResponse,
    responses=openapi.error_responses(401, 404, 503),
)
_model_routes(
    "GET",
    "/ready",
    _ready,
    "model readiness",
    response_model=openapi.ModelReadyResponse,
    responses={**openapi.error_responses(401, 404), 503: {"model": openapi.ModelReadyResponse}},
)
_model_routes(
    "POST",
    "/infer",
    _infer,
    "inference",
    responses=openapi.infer_responses(),
    openapi_extra=openapi.INFER_OPENAPI,
)
