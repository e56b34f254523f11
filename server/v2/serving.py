"""A checked V2 request through the one request path (server/pipeline.py): the bridge that the
REST routes (server/routes/v2.py) and the gRPC service (server/v2/grpc_service.py) share.

Task maps come back as the protocol's tensors: class ids uint8, probabilities and normals
float32, each at the size the request asked (``size``, ``max_side``), computed in the render
pool, one job per task and frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import metadata

import numpy as np

from server.budget import Reservation
from server.model_control import ModelControl
from server.pipeline import ClientGone, MapRequest, MapSize, Prediction
from server.state import ServerState
from server.v2.interface import KIND_DTYPES, FrameResult, InferRequest

log = logging.getLogger("server.v2")
# Whole copies of the maps a V2 response holds at once: the arrays, and the body (REST: one
# joined JSON + binary body; gRPC: the message's raw bytes and their serialised form).
REST_MAP_COPIES, GRPC_MAP_COPIES = 2, 3


def map_request(request: InferRequest, copies: int) -> MapRequest:
    size = MapSize(model=request.size == "model", max_side=request.max_side)
    dtypes = {t.name: np.dtype(KIND_DTYPES[t.kind]) for t in request.tasks}
    return MapRequest(request.tasks, size, dtypes=dtypes, copies=copies)


def deadline_for(state: ServerState, request: InferRequest, arrived: float) -> float:
    """The server's deadline, or the client's own ``timeout`` when that is sooner."""
    limit = state.settings.timeout_s
    if request.timeout_s is not None:
        limit = min(limit, request.timeout_s)
    return arrived + limit


async def infer(
    state: ServerState, request: InferRequest, copies: int, deadline: float, gone: ClientGone
) -> tuple[list[FrameResult], Reservation] | None:
    """One FrameResult per image or frame, and the memory they hold (the caller releases it
    once the response is out); ``None`` if the client left."""
    ask = map_request(request, copies)
    if request.image is not None:
        prediction = await state.pipeline.predict(request.image, ask, deadline, gone)
        predictions = None if prediction is None else [prediction]
    else:
        predictions = await state.pipeline.predict_frames(request.pixels, ask, deadline, gone)
    if predictions is None:
        return None
    reservation = predictions[0].reservation
    try:
        return await asyncio.gather(*(_frame(state, p) for p in predictions)), reservation
    except BaseException:
        reservation.release()
        raise


async def _frame(state: ServerState, prediction: Prediction) -> FrameResult:
    loop = asyncio.get_running_loop()
    tasks = prediction.plan.request.tasks
    arrays = await asyncio.gather(
        *(loop.run_in_executor(state.render_pool, _array, prediction, t) for t in tasks)
    )
    maps = {t.name: array for t, array in zip(tasks, arrays, strict=True)}
    result = prediction.result
    return FrameResult.per_task(tasks, maps, result.expert_tokens, result.shared_gate_mass)


def _array(prediction: Prediction, task) -> np.ndarray:
    return prediction.raster(task).array()


async def start_grpc(control: ModelControl):
    """The gRPC service on ``settings.host:grpc_port``, started; the caller stops it."""
    from server.v2 import grpc_service  # grpcio is only imported when gRPC is on

    settings = control.settings
    api_key = settings.api_key.get_secret_value() if settings.api_key else None

    def observe(method: str, status: int, seconds: float, model: str, version: str) -> None:
        control.metrics.observe_request("grpc", method, status, seconds, model, version)

    service = grpc_service.InferenceService(
        control,
        server_version(),
        _grpc_infer,
        is_ready=lambda: control.ready,
        api_key=api_key,
        observe=observe,
        new_hold=control.shared.budget.hold,
    )
    server, port = grpc_service.create_server(
        service, settings.host, settings.grpc_port, max_message_bytes=settings.max_body_bytes
    )
    if not port:
        raise RuntimeError(f"cannot bind gRPC to {settings.host}:{settings.grpc_port}")
    await server.start()
    log.info("Open Inference Protocol gRPC on %s:%d", settings.host, port)
    return server


async def _grpc_infer(state: ServerState, request: InferRequest, context) -> list[FrameResult]:
    """As the REST route, with the call's end as the client's leaving, and the reservation and
    the model version released when the call is over (the response message is serialised
    after this returns)."""
    state.acquire()
    context.add_done_callback(lambda _: state.release())
    ended = asyncio.Event()
    context.add_done_callback(lambda _: ended.set())
    deadline = deadline_for(state, request, time.monotonic())
    done = await infer(state, request, GRPC_MAP_COPIES, deadline, ended.wait)
    if done is None:
        raise asyncio.CancelledError  # the call is over: nothing to answer
    frames, reservation = done
    context.add_done_callback(lambda _: reservation.release())
    return frames


def server_version() -> str:
    try:
        return metadata.version("ase-serve")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0"
