"""Stages 7-8 for the native forms: a ``Prediction``'s maps restored and encoded as base64 PNGs
(json), PNGs (png: one, or a multipart/mixed body of one per task) or a streamed npz, with the
maps of one response side by side.

Large maps are restored and encoded in the render pool, one job per task (numba kernels, NumPy
and the deflate encoders release the GIL, so one response's maps use every core); the costliest
start first, as the pool starts jobs in order. Small maps (the model's own size) are done on the
event loop in turn: bounded work, less than the thread hand-offs would add.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from server import codecs, maps
from server.modeldir import ModelDir, TaskInfo
from server.pipeline import Prediction

T = TypeVar("T")

# Maps smaller than this (pixels) are rendered on the event loop, all tasks in turn: there a
# job per task costs twice one job (128x128: 2.25 vs 1.19 ms), and even one pool job adds a
# thread hand-off (about 0.3 ms of the request's 1.3 ms post-processing); from this size on,
# a job per task (480x640: 12.6 ms vs 18.2 in one job). bench/bench_render.py,
# docs/benchmarks.md.
PARALLEL_FROM_PIXELS = 2**15
# Time to restore and encode one map, relative to a probability map (measured at 480x640).
KIND_COST = {"vector": 4.0, "probability": 1.0, "classes": 0.25}


@dataclass(frozen=True)
class Look:
    """How PNG maps are drawn: the wire form, or colourised over the image (``visualize``)."""

    visualize: bool = False
    alpha: float = 0.5
    compress_level: int = 1


async def each_task(
    pool: Executor, prediction: Prediction, tasks: Iterable[TaskInfo], work: Callable[[TaskInfo], T]
) -> dict[str, T]:
    """``work(task)`` for every task, by task name, as the module docstring says."""
    tasks = list(tasks)
    if prediction.plan.map_width * prediction.plan.map_height < PARALLEL_FROM_PIXELS:
        return {t.name: work(t) for t in tasks}
    costliest_first = sorted(tasks, key=lambda t: -KIND_COST[t.kind])
    loop = asyncio.get_running_loop()
    done = await asyncio.gather(
        *(loop.run_in_executor(pool, partial(work, task)) for task in costliest_first)
    )
    by_name = {t.name: value for t, value in zip(costliest_first, done, strict=True)}
    return {t.name: by_name[t.name] for t in tasks}  # in the request's order


def task_png(prediction: Prediction, task: TaskInfo, look: Look) -> bytes:
    """One task's map at the planned size -> PNG, band by band."""
    raster = prediction.raster(task)
    bands: Iterable[np.ndarray] = raster.bands()
    if look.visualize:
        bands = _overlaid(task, raster, prediction.image, look.alpha)
    return codecs.encode_png_bands(bands, raster.width, raster.height, look.compress_level)


def _overlaid(task: TaskInfo, raster: maps.Raster, image: np.ndarray, alpha: float):
    start = 0
    for band in raster.bands():
        rows = image[start : start + band.shape[0]]
        start += band.shape[0]
        yield maps.overlay(rows, maps.colourise(task.kind, band, task.palette), alpha)


def task_json(prediction: Prediction, task: TaskInfo, look: Look) -> dict:
    png = task_png(prediction, task, look)
    plan = prediction.plan
    planes = [3] if look.visualize or task.kind == "vector" else []
    entry = {
        "kind": task.kind,
        "shape": [plan.map_height, plan.map_width, *planes],
        "encoding": "png",
        "data": base64.b64encode(png).decode("ascii"),
    }
    if task.kind == "classes":
        entry["classes"] = list(task.classes)
        entry["palette"] = [list(c) for c in task.palette]
    return entry


def router_json(model: ModelDir, prediction: Prediction, task: str) -> dict:
    tokens = model.adapters.tokens_per_stream
    result = prediction.result
    return {
        "expert_tokens": result.expert_tokens[task].tolist(),
        "shared_gate_share": (result.shared_gate_mass[task] / max(tokens, 1)).tolist(),
        "tokens_per_layer": tokens,
        "shared_experts": list(model.adapters.shared_experts),
    }


def npz_chunks(
    model: ModelDir,
    prediction: Prediction,
    tasks: Iterable[TaskInfo],
    router_stats: bool,
    look: Look | None = None,
) -> Iterator[bytes]:
    """The npz body, generated map band by map band (``codecs.stream_npz``); nothing runs
    until the first chunk is asked for, so all of it runs where the chunks are drawn. With
    ``look.visualize`` each task's entry is its uint8 RGB overlay (h, w, 3), not the map."""
    entries = []
    for task in tasks:
        raster = prediction.raster(task)
        if look is not None and look.visualize:
            overlay = _overlaid(task, raster, prediction.image, look.alpha)
            shape = (raster.height, raster.width, 3)
            entries.append(codecs.NpzEntry(task.name, shape, np.dtype(np.uint8), overlay))
        else:
            entries.append(codecs.NpzEntry(task.name, raster.shape, raster.dtype, raster.bands()))
    if router_stats:
        for task in tasks:
            router = router_json(model, prediction, task.name)
            for key, values in (
                (f"router_{task.name}", router["expert_tokens"]),
                (f"router_{task.name}_shared_gate_share", router["shared_gate_share"]),
            ):
                array = np.asarray(values, np.float32)
                entries.append(codecs.NpzEntry(key, array.shape, array.dtype, [array]))
    yield from codecs.stream_npz(entries)


NPZ_STREAM_BYTES = 64 * maps.BAND_PIXELS
"""What a streamed npz holds between its chunks: the band being made (float32 values and their
float64 sums), its bytes in the archive and the chunk they are joined into."""


def npz_held_bytes(prediction: Prediction) -> int:
    """The memory a streamed npz response holds while it is sent: a band at a time, each map's
    horizontal pass at the model's height (maps.Raster), and the image kept for overlays."""
    plan, model_height = prediction.plan, max(m.shape[-2] for m in prediction.result.maps.values())
    passes = sum(
        m.shape[0] * model_height * plan.map_width * 4 for m in prediction.result.maps.values()
    )
    image = 0 if prediction.image is None else prediction.image.nbytes
    return NPZ_STREAM_BYTES + passes + image


def multipart_mixed(parts: Iterable[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """``(name, content type, bytes)`` parts -> a ``multipart/mixed`` body and its media type.
    Each part's ``Content-Disposition`` names it (``name="semseg"; filename="semseg.png"``);
    the boundary is random and checked to occur in no part."""
    parts = list(parts)
    boundary = secrets.token_hex(16)
    while any(boundary.encode() in payload for _, _, payload in parts):
        boundary = secrets.token_hex(16)
    chunks = []
    for name, content_type, payload in parts:
        extension = content_type.rsplit("/", 1)[-1]
        head = (
            f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: inline; "
            f'name="{name}"; filename="{name}.{extension}"\r\n'
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        chunks += (head.encode("ascii"), payload, b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f"multipart/mixed; boundary={boundary}"


async def in_pool(pool: Executor, chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking chunk iterator, each step run in ``pool``: the event loop stays free."""
    loop = asyncio.get_running_loop()
    while (chunk := await loop.run_in_executor(pool, next, chunks, None)) is not None:
        if chunk:
            yield chunk
