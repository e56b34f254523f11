"""The Open Inference Protocol's REST front door (KServe V2; docs/api_v2.md), on the same port
as ``/predict``: health, server and model metadata, and inference with JSON tensors or the
binary tensor data extension.

It only translates: ``server/v2/rest.py`` parses the body, ``server/v2/interface.py`` checks it
against the model and builds the response, ``server/v2/serving.py`` runs it through the one
request path. Errors under ``/v2`` are the protocol's ``{"error": "..."}`` (routes/errors.py).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.routes.body import client_gone, read_body
from server.routes.native import CLIENT_CLOSED
from server.routes.ops import app_state, ready_state
from server.routes.responses import BudgetedResponse
from server.v2 import interface, openapi, rest, serving

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])
MODEL = "/models/{model_name}"
VERSION = "/models/{model_name}/versions/{model_version}"


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
    limit = state.settings.max_body_bytes
    body = await read_body(request, limit)
    wire = rest.parse_request(body, request.headers, model_name, model_version, limit)
    del body
    checked = interface.infer_request(wire, state.model)
    deadline = serving.deadline_for(state, checked, arrived)
    done = await serving.infer(
        state, checked, serving.REST_MAP_COPIES, deadline, lambda: client_gone(request)
    )
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
    return BudgetedResponse(content, headers=headers, reservation=reservation)


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
