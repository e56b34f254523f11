"""Triton's model repository extension over REST (server/v2/repository.py; docs/api_v2.md):
``POST /v2/repository/index``, ``/v2/repository/models/{name}/load`` and ``.../unload``, behind
the API key like every ``/v2`` route but the probes. Load and unload need
``--model-control-mode explicit`` (otherwise 503, as Triton); the index answers in every mode.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from server.model_control import ModelControl
from server.routes.body import read_body
from server.routes.ops import app_state
from server.v2 import openapi
from server.v2 import repository as wire

router = APIRouter(prefix="/v2/repository", tags=["Model repository (Triton's extension)"])
CONTROL_PATHS = (
    "/v2/repository/models/{model_name}/load",
    "/v2/repository/models/{model_name}/unload",
)
BODY_LIMIT = 1 << 16  # these requests carry a few flags at most


class IndexEntry(BaseModel):
    name: str
    version: str = Field(description="empty for a model never loaded")
    state: str = Field(description="READY, LOADING, UNLOADING, UNAVAILABLE, or empty")
    reason: str = Field(description="why UNAVAILABLE: unloaded, or the load's error")


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    content = {"application/json": {"schema": {"type": "object", **schema}}}
    return {"requestBody": {"required": False, "description": description, "content": content}}


INDEX_BODY = _body(
    {"additionalProperties": False, "properties": {"ready": {"type": "boolean"}}},
    "empty, or ready: true for the ready versions only",
)
LOAD_BODY = _body(
    {
        "additionalProperties": False,
        "properties": {"parameters": {"type": "object", "maxProperties": 0}},
    },
    "empty: the model is read from the repository's folder",
)
UNLOAD_BODY = _body(
    {
        "additionalProperties": False,
        "properties": {
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"unload_dependents": {"type": "boolean"}},
            }
        },
    },
    "empty, or parameters.unload_dependents (accepted; no model here has dependents)",
)
CONTROL_RESPONSES = {
    200: {"description": "done: loaded (ready) or unloaded; an empty body"},
    **openapi.error_responses(400, 401, 404),
    503: {"model": openapi.V2ErrorResponse, "description": "model control is not explicit"},
}


@router.post(
    "/index",
    response_model=list[IndexEntry],
    responses=openapi.error_responses(400, 401),
    openapi_extra=INDEX_BODY,
    summary="repository index: every model and version, with its state",
)
async def index(request: Request) -> list[dict[str, str]]:
    control = app_state(request.app, need_warm=False)
    ready = wire.index_request(await read_body(request, BODY_LIMIT))
    return await control.index(ready)


@router.post(
    "/models/{model_name}/load",
    responses=CONTROL_RESPONSES,
    openapi_extra=LOAD_BODY,
    summary="load (or reload) a model from the repository",
)
async def load(request: Request, model_name: str) -> Response:
    control = app_state(request.app, need_warm=False)
    wire.load_request(await read_body(request, BODY_LIMIT))
    await control.load(model_name)
    return Response(status_code=200)


@router.post(
    "/models/{model_name}/unload",
    responses=CONTROL_RESPONSES,
    openapi_extra=UNLOAD_BODY,
    summary="unload every version of a model (after its requests in flight)",
)
async def unload(request: Request, model_name: str) -> Response:
    control = app_state(request.app, need_warm=False)
    wire.unload_request(await read_body(request, BODY_LIMIT))
    await control.unload(model_name)
    return Response(status_code=200)


def describe_control(document: dict, control: ModelControl) -> None:
    """Load and unload answer 503 unless model control is explicit: the document then leaves
    them out, as this server cannot do them."""
    if control.settings.model_control_mode != "explicit":
        for path in CONTROL_PATHS:
            document["paths"].pop(path, None)


def endpoint_label(parts: list[str]) -> str:
    """The metrics' endpoint for a path under /v2/repository/ (``parts`` after it)."""
    if parts == ["index"]:
        return "/v2/repository/index"
    if len(parts) == 3 and parts[0] == "models" and parts[2] in ("load", "unload"):
        return f"/v2/repository/models/{{model}}/{parts[2]}"
    return "other"
