"""The native front door: ``POST /predict[?model=NAME[&version=V]]`` and ``GET /v1/models``.

It only translates: query and body -> ``MapRequest`` and the upload (the model version chosen
by ``model`` and ``version``: server/model_control.py), the pipeline's
``Prediction`` -> JSON, PNG or a streamed npz. The memory a request reserved is given back once
its response has been sent, or the client has gone (``server/routes/responses.py``).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from server import render
from server.errors import InvalidParameter
from server.limits import TIMED_OUT
from server.modeldir import ModelDir, TaskInfo
from server.pipeline import MapRequest, MapSize, Prediction
from server.protocol import ModelsResponse, OutputFormat, PredictResponse, error_responses
from server.routes.body import client_gone, read_image_body
from server.routes.ops import app_state, ready_state
from server.routes.responses import BudgetedResponse, BudgetedStream
from server.state import ServerState

router = APIRouter()
CLIENT_CLOSED = 499  # nginx's convention; the client never sees it, the metrics do
TASKS_HELP = (
    "comma-separated task names (duplicates and an empty list are errors); omitted: all of the "
    "model's"
)
FORMAT_HELP = (
    "json (default): base64 PNG per task; npz: one numpy archive, streamed, keys = task names "
    "(uint8 class ids, uint8 0-255 probabilities, (h, w, 3) unit normals as npz_normals says; "
    "with visualize, each task's uint8 RGB overlay (h, w, 3) instead; router_<task> (L, N) and "
    "router_<task>_shared_gate_share (L,) with router_stats); png: the PNG itself for one task, "
    "else (several tasks, or router_stats) multipart/mixed: one image/png part per task, its "
    'Content-Disposition naming the task (name="semseg"), then with router_stats an '
    "application/json part named router"
)
SIZE_HELP = (
    "upload (default): maps at the uploaded image's size, aligned with it; model: at the "
    "model's input size (the scale to the upload is in the response: maps.scale, X-Map-Scale)"
)
MAX_SIDE_HELP = "maps scaled so that their longest side is at most this (aspect kept)"
MODEL_HELP = "the model to run (GET /v1/models lists them); omitted: the default model"
VERSION_HELP = "the model's version; omitted: its highest version served"
NPZ_NORMALS_HELP = (
    "format=npz only: normals as float32 unit vectors, or uint8 like the PNG's; ignored with "
    "other formats and with visualize (which send uint8 pictures)"
)
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image as the raw body, or as multipart/form-data field 'file'",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}
BINARY_RESPONSES = {
    200: {
        "description": "json (schema below), npz, png or multipart/mixed (png, several tasks) "
        "depending on format",
        "content": {
            "application/x-npz": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/mixed": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@dataclass(frozen=True)
class Options:
    format: str = "json"
    visualize: bool = False
    alpha: float = 0.5
    router_stats: bool = False
    npz_normals: str = "float32"


@router.get("/v1/models", response_model=ModelsResponse, responses=error_responses(401, 503))
async def models(request: Request) -> dict:
    control = app_state(request.app, need_warm=False)
    return {
        "default_model": control.default_name(),
        "models": [describe(state) for state in control.all_served()],
    }


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses={**BINARY_RESPONSES, **error_responses(400, 401, 404, 413, 415, 422, 503, 504)},
    openapi_extra=REQUEST_BODY,
    summary="dense maps for one image",
)
async def predict(
    request: Request,
    tasks: Annotated[str | None, Query(description=TASKS_HELP)] = None,
    format: Annotated[OutputFormat, Query(description=FORMAT_HELP)] = "json",
    visualize: Annotated[bool, Query(description="colourised maps over the image")] = False,
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="overlay opacity")] = 0.5,
    router_stats: Annotated[bool, Query(description="per-task expert load")] = False,
    size: Annotated[Literal["upload", "model"], Query(description=SIZE_HELP)] = "upload",
    max_side: Annotated[int | None, Query(ge=1, le=65535, description=MAX_SIDE_HELP)] = None,
    npz_normals: Annotated[
        Literal["float32", "uint8"], Query(description=NPZ_NORMALS_HELP)
    ] = "float32",
    model: Annotated[str | None, Query(description=MODEL_HELP)] = None,
    version: Annotated[str | None, Query(description=VERSION_HELP)] = None,
) -> Response:
    arrived = time.monotonic()
    state = ready_state(request, model=model, version=version)
    options = Options(format, visualize, alpha, router_stats, npz_normals)
    wanted = parse_tasks(tasks, state.model)
    ask = MapRequest(
        wanted,
        MapSize(model=size == "model", max_side=max_side),
        dtypes=map_dtypes(wanted, options),
        keep_image=visualize,
    )
    deadline = arrived + state.settings.timeout_s
    hold = state.budget.hold()  # the body's bytes, until it has been decoded
    try:
        try:
            body = await read_image_body(request, state.settings.max_body_bytes, hold)
        except ClientDisconnect:
            return client_closed(request)
        prediction = await state.pipeline.predict(body, ask, deadline, lambda: client_gone(request))
        del body
    finally:
        hold.release()
    if prediction is None:
        return Response(status_code=CLIENT_CLOSED)
    try:
        return await _respond(state, prediction, options, arrived)
    except BaseException:
        prediction.reservation.release()
        raise


def client_closed(request: Request) -> Response:
    """What a route returns when the client went while its body was read: never sent, but the
    metrics record 499, or 408 when the body's deadline (server/limits.py) cut it."""
    return Response(status_code=408 if request.scope.get(TIMED_OUT) else CLIENT_CLOSED)


def describe_model(document: dict, models: list[ModelDir]) -> None:
    """Patch the generated OpenAPI ``document`` for the served models: ``model`` and
    ``version`` name them; ``tasks`` is a non-empty, comma-separated list of task names (spaces
    around them allowed, as parse_tasks strips them) that one of them serves, so that unknown
    names and an empty list are schema-invalid; repeated names are not (JSON Schema cannot
    say it) and stay a 422, as do tasks of another model than the one asked for."""
    tasks = sorted({(t.id, t.name) for model in models for t in model.tasks})
    name = "(" + "|".join(re.escape(task) for _, task in tasks) + ")"
    pattern = rf"^\s*{name}\s*(,\s*{name}\s*)*$"
    values = {
        "model": sorted({model.name for model in models}),
        "version": sorted({model.version for model in models}, key=int),
    }
    for parameter in document["paths"]["/predict"]["post"]["parameters"]:
        if parameter["name"] == "tasks":
            parameter["schema"] = {"type": "string", "pattern": pattern, "title": "Tasks"}
        if parameter["name"] in values:
            parameter["schema"] = {"type": "string", "enum": values[parameter["name"]]}


def parse_tasks(tasks: str | None, model: ModelDir) -> tuple[TaskInfo, ...]:
    """``"semseg,normals"`` -> the model's tasks in id order; omitted: all of them; 422 for an
    empty list (``tasks=``: a client that built it from nothing should hear so, not get all
    five), unknown or repeated names."""
    if tasks is None:
        return tuple(model.tasks)
    names = [name.strip() for name in tasks.split(",")]
    if not any(names):
        raise InvalidParameter(
            "invalid_parameter",
            "tasks is empty: name at least one task "
            f"({', '.join(model.task_names)}), or omit it for all",
        )
    # Linear in the query (a set and a counter; names.count in a loop was quadratic: 12,000
    # names held the event loop for seconds), and the messages name a few names, not all.
    known = set(model.task_names)
    unknown = list(dict.fromkeys(name for name in names if name not in known))
    if unknown:
        raise InvalidParameter(
            "unknown_task",
            f"unknown task(s) {_some(unknown)}; this model serves {', '.join(model.task_names)}",
        )
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise InvalidParameter("duplicate_task", f"task(s) {repeated} requested more than once")
    wanted = set(names)
    return tuple(t for t in model.tasks if t.name in wanted)


def _some(names: list[str], shown: int = 8) -> str:
    """``names`` for a message: the first ``shown`` (each cut to 40 characters), then a count."""
    listed = str([name[:40] for name in names[:shown]])
    return listed if len(names) <= shown else f"{listed} and {len(names) - shown} more"


def map_dtypes(wanted: tuple[TaskInfo, ...], options: Options) -> dict[str, np.dtype]:
    """The maps' forms: uint8 wire forms, but npz normals as float32 unit vectors by default
    (predict-dataset's npz files follow it), unless drawn over the image (visualize)."""
    if options.format != "npz" or options.npz_normals != "float32" or options.visualize:
        return {}
    return {t.name: np.dtype(np.float32) for t in wanted if t.kind == "vector"}


async def _respond(
    state: ServerState, prediction: Prediction, options: Options, arrived: float
) -> Response:
    inferred = time.monotonic()
    wanted = prediction.plan.request.tasks
    look = render.Look(options.visualize, options.alpha, state.settings.png_compression)
    if options.format == "npz":
        chunks = render.npz_chunks(state.model, prediction, wanted, options.router_stats, look)
        content, media_type = render.in_pool(state.render_pool, chunks), "application/x-npz"
    else:
        encode = render.task_json if options.format == "json" else render.task_png
        encoded = await render.each_task(
            state.render_pool, prediction, wanted, lambda t: encode(prediction, t, look)
        )
    timings = {
        **prediction.timings,
        "postprocess": time.monotonic() - inferred,
        "total": time.monotonic() - arrived,
    }
    milliseconds = {name: round(seconds * 1000, 3) for name, seconds in timings.items()}
    if options.format == "json":
        # orjson: 0.005 ms for a 128x128 five-task body where json.dumps took 0.16 ms
        body = {**_json_body(state, prediction, encoded, options), "timings_ms": milliseconds}
        content, media_type = orjson.dumps(body), "application/json"
    elif options.format == "png":
        content, media_type = _png_body(state, prediction, encoded, options)
    # What the response holds from here on: its body, or a streamed npz's bands in the making.
    held = render.npz_held_bytes(prediction) if options.format == "npz" else len(content)
    prediction.reservation.shrink_to(held)
    kind = BudgetedStream if options.format == "npz" else BudgetedResponse
    # The router counters are updated once the response has gone out (Starlette runs the
    # background after the last byte), not between the model's answer and the responses.
    return kind(
        content,
        media_type=media_type,
        headers=_headers(state, prediction, milliseconds),
        background=BackgroundTask(_flush_router, state),
        reservation=prediction.reservation,
    )


def _png_body(
    state: ServerState, prediction: Prediction, encoded: dict[str, bytes], options: Options
) -> tuple[bytes, str]:
    """One task: the PNG itself; several (or router_stats): multipart/mixed, a part per task."""
    wanted = prediction.plan.request.tasks
    if len(wanted) == 1 and not options.router_stats:
        return encoded[wanted[0].name], "image/png"
    parts = [(t.name, "image/png", encoded[t.name]) for t in wanted]
    if options.router_stats:
        router = {t.name: render.router_json(state.model, prediction, t.name) for t in wanted}
        parts.append(("router", "application/json", orjson.dumps(router)))
    return render.multipart_mixed(parts)


def _json_body(state: ServerState, prediction: Prediction, encoded: dict, options: Options) -> dict:
    plan = prediction.plan
    body = {
        "model": {
            "name": state.model.name,
            "version": state.model.version,
            "checkpoint": state.model.checkpoint,
        },
        "provider": state.runtime.provider,
        "image": {"width": plan.width, "height": plan.height},
        "maps": {"width": plan.map_width, "height": plan.map_height, "scale": list(plan.scale)},
        "tasks": {t.name: encoded[t.name] for t in plan.request.tasks},
    }
    if options.router_stats:
        body["router"] = {
            t.name: render.router_json(state.model, prediction, t.name) for t in plan.request.tasks
        }
    return body


def _headers(state: ServerState, prediction: Prediction, milliseconds: dict) -> dict[str, str]:
    """Timings as ``Server-Timing`` for every format (npz: the maps are computed while the body
    streams, after these timings), the model and version that answered, the maps' scale to
    the upload."""
    return {
        "Server-Timing": ", ".join(f"{k};dur={v}" for k, v in milliseconds.items()),
        "X-Model-Name": state.model.name,
        "X-Model-Version": state.model.version,
        "X-Map-Scale": ",".join(f"{s:.6g}" for s in prediction.plan.scale),
    }


async def _flush_router(state: ServerState) -> None:  # async: Starlette runs it on the loop
    state.batcher.flush_router()


def describe(state: ServerState) -> dict:
    model = state.model
    return {
        "name": model.name,
        "version": model.version,
        "checkpoint": model.checkpoint,
        "dataset": model.metadata.dataset,
        "training": (
            model.metadata.training.model_dump(mode="json") if model.metadata.training else None
        ),
        "tasks": [t.model_dump(mode="json") for t in model.tasks],
        "input": model.input.model_dump(mode="json"),
        "adapters": model.adapters.model_dump(mode="json"),
        "providers": state.runtime.providers,
        "graph": state.runtime.graph.name,
        "max_batch": state.settings.max_batch,
    }
