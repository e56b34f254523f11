"""``POST /predict``: read the body within limits, queue the image, render the maps.

Uploads are decoded in worker threads, and large maps restored and encoded in the render pool,
the maps of one response side by side (PIL, NumPy and the deflate encoders release the GIL), so
they use every core. Small baseline JPEGs and small maps (the model's own size) are handled on
the event loop: bounded work, less than the thread hand-offs would add. While a request waits
for its batch, a watcher notices if the client leaves, and the queued job is then cancelled so that
the model never runs it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response
from PIL import Image
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from server import codecs
from server.batching import Batcher, Job, JobResult, deadline_error
from server.modeldir import ModelDir, TaskInfo
from server.protocol import ApiError
from server.runtime import preprocess, restore_size

if TYPE_CHECKING:
    from server.app import ServerState

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's convention; the client never sees it, the metrics do
TASKS_HELP = "comma-separated task names (duplicates are an error); omitted: all of the model's"
FORMAT_HELP = (
    "json (default): base64 PNG per task; npz: one numpy archive, keys = task names (uint8 class "
    "ids, uint8 0-255 probabilities, float32 (h, w, 3) unit normals; router_<task> (L, N) and "
    "router_<task>_shared_gate_share (L,) with router_stats); png: the PNG itself, one task only"
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
        "description": "json (schema below), npz or png depending on format",
        "content": {
            "application/x-npz": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@dataclass(frozen=True)
class Options:
    format: str
    visualize: bool
    alpha: float
    router_stats: bool


async def handle(
    request: Request, state: ServerState, tasks: str | None, options: Options
) -> Response:
    arrived = time.monotonic()
    wanted = parse_tasks(tasks, state.model)
    check_options(options, wanted)
    try:
        body = await read_image_body(request, state.settings.max_body_bytes)
    except ClientDisconnect:
        return Response(status_code=CLIENT_CLOSED)
    opened = _small_jpeg_header(body, state.settings.max_pixels)
    if opened is not None and decodes_on_the_loop(opened):
        rgb, image = _decode(opened, state)
    else:
        upload = body if opened is None else opened  # a PNG, a large JPEG, ...: in a thread
        rgb, image = await asyncio.to_thread(_decode, upload, state)
    decoded = time.monotonic()
    deadline = arrived + state.settings.timeout_s
    job = state.batcher.submit(image, tuple(t.id for t in wanted), deadline)
    result = await wait_for_job(state.batcher, job, request, deadline)
    if result is None:
        return Response(status_code=CLIENT_CLOSED)
    inferred = time.monotonic()
    response = await _render(state, wanted, rgb, result, options)
    timings = {
        "decode": decoded - arrived,
        "queue": result.queue_s,
        "inference": result.inference_s,
        "postprocess": time.monotonic() - inferred,
        "total": time.monotonic() - arrived,
    }
    return _finish(response, state, timings)


def parse_tasks(tasks: str | None, model: ModelDir) -> list[TaskInfo]:
    """``"semseg,normals"`` -> the model's tasks in id order; 422 for unknown or repeated names."""
    if tasks is None or not tasks.strip():
        return list(model.tasks)
    names = [name.strip() for name in tasks.split(",")]
    unknown = [name for name in names if name not in model.task_names]
    if unknown:
        raise ApiError(422, "unknown_task", f"unknown task(s) {unknown}; this model serves "
                       f"{', '.join(model.task_names)}")  # fmt: skip
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ApiError(422, "duplicate_task", f"task(s) {repeated} requested more than once")
    return [t for t in model.tasks if t.name in names]


def check_options(options: Options, wanted: list[TaskInfo]) -> None:
    if options.format == "png" and len(wanted) != 1:
        raise ApiError(422, "invalid_parameter", f"format=png returns one image, so it needs "
                       f"exactly one task (got {len(wanted)}); use json or npz")  # fmt: skip
    if options.format == "npz" and options.visualize:
        raise ApiError(422, "invalid_parameter", "visualize=true works with json and png; npz "
                       "carries the raw arrays")  # fmt: skip
    if options.format == "png" and options.router_stats:
        raise ApiError(422, "invalid_parameter", "router_stats=true needs format json or npz")


async def read_image_body(request: Request, limit: int) -> bytes:
    """The image bytes from a raw body or multipart field ``file``; 413 past ``limit`` bytes."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = content_type == "multipart/form-data"
    if not (multipart or not content_type or content_type.startswith("image/")
            or content_type == "application/octet-stream"):  # fmt: skip
        raise ApiError(415, "unsupported_media_type", f"content type {content_type!r} is not an "
                       "image: send image/jpeg, image/png, ... or multipart 'file'")  # fmt: skip
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(len(body), limit)
    return await _multipart_file(request, bytes(body), limit) if multipart else bytes(body)


async def _multipart_file(request: Request, body: bytes, limit: int) -> bytes:
    async def replay():
        yield body

    parser = MultiPartParser(
        request.headers, replay(), max_files=1, max_fields=8, max_part_size=limit
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {error.message}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "bad_multipart", "multipart body has no file field named 'file'")
        return await upload.read()
    finally:
        await form.close()  # large parts are spooled to temporary files


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"body is {size}+ bytes; the limit is {limit}")


# Small baseline JPEGs (the usual upload at the model's size) are decoded on the event loop: a
# hand-off to a thread and back costs more than decoding them (128x128: 0.3 ms). Every other
# upload is opened and decoded in a thread, so that no upload can hold the loop: reading a PNG's
# header can inflate its text chunks (up to 64 MB in PIL), a progressive JPEG can carry any
# number of scans, and large images take milliseconds (480x640: 1.3 ms; 40 megapixels: seconds).
# A JPEG's header is markers only, read in time linear in the body, which is small here.
INLINE_DECODE_PIXELS = 2**16
INLINE_DECODE_BYTES = 2**18
JPEG_MAGIC = b"\xff\xd8\xff"


def _small_jpeg_header(body: bytes, max_pixels: int) -> Image.Image | None:
    """A small JPEG upload opened (its header only); ``None`` for any other upload."""
    if len(body) > INLINE_DECODE_BYTES or not body.startswith(JPEG_MAGIC):
        return None
    return codecs.open_image(body, max_pixels)


def decodes_on_the_loop(opened: Image.Image) -> bool:
    """A baseline JPEG of at most ``INLINE_DECODE_PIXELS`` pixels: bounded, sub-millisecond."""
    return (
        opened.format == "JPEG"
        and not opened.info.get("progressive")
        and opened.width * opened.height <= INLINE_DECODE_PIXELS
    )


def _decode(upload: Image.Image | bytes, state: ServerState) -> tuple[np.ndarray, np.ndarray]:
    """An opened image or the raw upload -> (RGB at its size, normalised model input)."""
    if isinstance(upload, bytes):
        upload = codecs.open_image(upload, state.settings.max_pixels)
    rgb = codecs.image_pixels(upload)
    return rgb, preprocess(rgb, state.model)


async def wait_for_job(
    batcher: Batcher, job: Job, request: Request, deadline: float
) -> JobResult | None:
    """The job's result; ``None`` if the client left; 504 past the deadline. Whatever ends the
    wait first, a job still queued leaves the queue, so the model never runs it."""
    watcher = asyncio.create_task(_client_gone(request))
    reason = "disconnected"  # also when this handler itself is cancelled
    try:
        done, _ = await asyncio.wait(
            {job.future, watcher},
            timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if job.future.done():
            return job.future.result()  # raises the job's ApiError (504, 500) if it failed
        if watcher in done:
            return None
        reason = "deadline"
        raise deadline_error()
    finally:
        watcher.cancel()
        if not job.future.done():
            batcher.abandon(job, reason)


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _render(state: ServerState, wanted: list[TaskInfo], rgb: np.ndarray,
                  result: JobResult, options: Options) -> Response | dict:  # fmt: skip
    """A binary response, or the JSON body without its timings (added last)."""
    if options.format == "npz":
        return await _npz(state, wanted, rgb, result, options)
    level = state.settings.png_compression
    encode = _task_json if options.format == "json" else _task_png
    encoded = await _each_task(
        state, wanted, rgb, lambda t: encode(t, result.maps[t.name], rgb, options, level)
    )
    if options.format == "png":
        return Response(encoded[wanted[0].name], media_type="image/png")
    height, width = rgb.shape[:2]
    body = {
        "model": {"name": state.model.name, "version": state.model.version},
        "provider": state.runtime.provider,
        "image": {"width": width, "height": height},
        "tasks": {t.name: encoded[t.name] for t in wanted},
    }
    if options.router_stats:
        body["router"] = {t.name: _router_json(state.model, result, t.name) for t in wanted}
    return body


# Maps smaller than this (pixels) are rendered on the event loop, all tasks in turn: there a
# job per task costs twice one job (128x128: 2.25 vs 1.19 ms), and even one pool job adds a
# thread hand-off (about 0.3 ms of the request's 1.3 ms post-processing); from this size on,
# a job per task (480x640: 12.6 ms vs 18.2 in one job). bench/bench_render.py,
# docs/benchmarks.md.
PARALLEL_FROM_PIXELS = 2**15
# Time to restore and encode one map, relative to a probability map (measured at 480x640).
KIND_COST = {"vector": 4.0, "probability": 1.0, "classes": 0.25}


async def _each_task(state: ServerState, wanted: list[TaskInfo], rgb: np.ndarray,
                     work: Callable[[TaskInfo], T]) -> dict[str, T]:  # fmt: skip
    """``work(task)`` for every task, by task name: small maps in turn on the event loop (about
    a millisecond for five), large ones one pool job per task. PIL, NumPy and the deflate
    encoders release the GIL, so one response's large maps use every core; the costliest
    start first, as the pool starts jobs in order."""
    height, width = rgb.shape[:2]
    if height * width < PARALLEL_FROM_PIXELS:
        return {t.name: work(t) for t in wanted}
    costliest_first = sorted(wanted, key=lambda t: -KIND_COST[t.kind])
    done = await _in_pool(state, (partial(work, task) for task in costliest_first))
    return {t.name: value for t, value in zip(costliest_first, done, strict=True)}


async def _in_pool(state: ServerState, jobs: Iterable[Callable[[], T]]) -> list[T]:
    loop = asyncio.get_running_loop()
    return await asyncio.gather(*(loop.run_in_executor(state.render_pool, job) for job in jobs))


def _task_png(task: TaskInfo, prediction: np.ndarray, rgb: np.ndarray, options: Options,
              level: int) -> bytes:  # fmt: skip
    """One stream's prediction (C, H, W) -> the PNG of its map at the image's size."""
    height, width = rgb.shape[:2]
    values = restore_size(task.kind, prediction, width, height)
    return codecs.encode_png(_picture(task, values, rgb, options), level)


def _picture(task: TaskInfo, values: np.ndarray, rgb: np.ndarray, options: Options) -> np.ndarray:
    wire = codecs.to_uint8(task.kind, values)
    if not options.visualize:
        return wire
    return codecs.overlay(rgb, codecs.colourise(task.kind, wire, task.palette), options.alpha)


def _task_json(task: TaskInfo, prediction: np.ndarray, rgb: np.ndarray, options: Options,
               level: int) -> dict:  # fmt: skip
    png = _task_png(task, prediction, rgb, options, level)
    planes = [3] if options.visualize or task.kind == "vector" else []
    entry = {"kind": task.kind, "shape": [*rgb.shape[:2], *planes], "encoding": "png",
             "data": base64.b64encode(png).decode("ascii")}  # fmt: skip
    if task.kind == "classes":
        entry["classes"] = list(task.classes)
        entry["palette"] = [list(c) for c in task.palette]
    return entry


def _router_json(model: ModelDir, result: JobResult, task: str) -> dict:
    tokens = model.adapters.tokens_per_stream
    return {
        "expert_tokens": result.expert_tokens[task].tolist(),
        "shared_gate_share": (result.shared_gate_mass[task] / max(tokens, 1)).tolist(),
        "tokens_per_layer": tokens,
        "shared_experts": list(model.adapters.shared_experts),
    }


async def _npz(state: ServerState, wanted: list[TaskInfo], rgb: np.ndarray, result: JobResult,
               options: Options) -> Response:  # fmt: skip
    height, width = rgb.shape[:2]
    maps = await _each_task(
        state, wanted, rgb, lambda t: _npz_map(t, result.maps[t.name], width, height)
    )
    arrays = {t.name: maps[t.name] for t in wanted}
    if options.router_stats:
        for task in wanted:
            router = _router_json(state.model, result, task.name)
            arrays[f"router_{task.name}"] = np.asarray(router["expert_tokens"], np.float32)
            share = np.asarray(router["shared_gate_share"], np.float32)
            arrays[f"router_{task.name}_shared_gate_share"] = share
    [body] = await _in_pool(state, [partial(codecs.encode_npz, arrays)])
    return Response(body, media_type="application/x-npz")


def _npz_map(task: TaskInfo, prediction: np.ndarray, width: int, height: int) -> np.ndarray:
    values = restore_size(task.kind, prediction, width, height)
    return values if task.kind == "vector" else codecs.to_uint8(task.kind, values)


def _finish(rendered: Response | dict, state: ServerState, timings: dict[str, float]) -> Response:
    """Timings: in the JSON body, and as a ``Server-Timing`` header for every format."""
    milliseconds = {name: round(seconds * 1000, 3) for name, seconds in timings.items()}
    if isinstance(rendered, dict):
        # orjson: 0.005 ms for a 128x128 five-task body where json.dumps took 0.16 ms
        body = orjson.dumps({**rendered, "timings_ms": milliseconds})
        rendered = Response(body, media_type="application/json")
    rendered.headers["Server-Timing"] = ", ".join(f"{k};dur={v}" for k, v in milliseconds.items())
    rendered.headers["X-Model-Version"] = state.model.version
    # The router counters are updated once the response has gone out (Starlette runs the
    # background after the last byte), not between the model's answer and the response.
    rendered.background = BackgroundTask(_flush_router, state.batcher)
    return rendered


async def _flush_router(batcher: Batcher) -> None:  # async: Starlette runs it on the loop
    batcher.flush_router()
