"""The request path every front door shares, stage by stage, in this order:

1. open        the upload's header: format, upright size, limits; no pixel decoded
2. plan        the maps' size, the JPEG decode scale and the memory the request will hold
3. admit       reserve that memory from the budget (server/budget.py): wait, or 503
4. decode      at the planned scale (JPEG: 1/2, 1/4 or 1/8 in the DCT domain), upright RGB
5. preprocess  resize to the model's input, normalise
6. infer       in a batch with other requests (server/batching.py)
7. restore     each task's map at the planned size and form, band by band (server/maps.py)
8. encode      by the front door: PNG, npz, raw tensors (server/codecs.py)

No HTTP here: front doors (server/routes/) translate their protocol into a ``MapRequest`` and
the raised ``ServingError`` into their own error shape.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from server import codecs, maps
from server.batching import Batcher, JobResult
from server.budget import MemoryBudget, Reservation
from server.errors import InvalidParameter, TooLarge, deadline_exceeded
from server.modeldir import ModelDir, TaskInfo

DECODE_BYTES_PER_PIXEL = 8
"""Peak bytes per decoded pixel: PIL's 4-byte RGBX buffer and the 3-byte RGB array (the
decode), or the array and PIL's copy of it that the resize reads (the preprocess), and slack."""
BAND_BYTES_PER_PIXEL = 16
"""Per pixel of one band (``codecs.BAND_PIXELS``): its crop, its conversion and its bytes."""
DECODE_BYTES_PER_LINE = 40
"""Per row and per column of the decoded image, what grows with its sides rather than its
area, which only counts for extreme shapes (1 x 39,000,000): PIL's row table (8 bytes a row,
for each image it holds), the decoder's row buffers (up to 16 bytes a column) and the resize's
filter weights (16 bytes per source row and column)."""
DCT_MARGIN = 2
"""JPEGs are decoded in the DCT domain down to at least this multiple of the model's input,
then resized exactly: the model sees an image averaged over at least 2x2 decoded pixels."""
ClientGone = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class MapSize:
    """The size the maps come back at: the upload's (default; the maps align with the image)
    or the model's input size (``model``), then, with ``max_side``, scaled down so that the
    longest side is at most ``max_side``, aspect kept (both together: the model's size bounded)."""

    model: bool = False
    max_side: int | None = None

    def __post_init__(self) -> None:
        if self.max_side is not None and self.max_side < 1:
            raise InvalidParameter("invalid_parameter", f"max_side must be >= 1: {self.max_side}")

    def resolve(self, width: int, height: int, model: ModelDir) -> tuple[int, int]:
        if self.model:
            width, height = model.width, model.height
        longest = max(width, height)
        if self.max_side is None or longest <= self.max_side:
            return width, height
        scale = self.max_side / longest
        return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class MapRequest:
    """What a front door asks of one image: tasks in id order, the maps' size, each map's
    dtype (uint8 wire form, or float32 values), the image itself at map size (overlays), and
    how many whole copies of the maps its response holds at once (the memory it reserves)."""

    tasks: tuple[TaskInfo, ...]
    size: MapSize = MapSize()
    dtypes: dict[str, np.dtype] = field(default_factory=dict)  # task -> dtype; default uint8
    keep_image: bool = False
    copies: int = 1  # whole copies of the maps the front door holds at once (V2: arrays + body)

    def dtype(self, task: TaskInfo) -> np.dtype:
        return np.dtype(self.dtypes.get(task.name, np.uint8))


@dataclass(frozen=True)
class Plan:
    """How one image goes through: its upright size, the maps' size, the JPEG decode scale
    (1: none), and the bytes it will hold. ``upload`` is None for raw pixels (frames)."""

    width: int
    height: int
    request: MapRequest
    map_width: int
    map_height: int
    dct_scale: int
    cost_bytes: int
    upload: codecs.Upload | None = None

    @property
    def scale(self) -> tuple[float, float]:
        """Image pixels per map pixel, along x and y."""
        return self.width / self.map_width, self.height / self.map_height


@dataclass
class Prediction:
    """One image through the model: what the encoders need, and the memory it holds."""

    plan: Plan
    result: JobResult
    reservation: Reservation
    image: np.ndarray | None  # RGB at map size, when the request keeps it
    timings: dict[str, float]

    def raster(self, task: TaskInfo) -> maps.Raster:
        plan = self.plan
        return maps.Raster(
            task.kind,
            self.result.maps[task.name],
            plan.map_width,
            plan.map_height,
            plan.request.dtype(task),
        )


class Pipeline:
    """Stages 1-6 for one model; stages 7-8 run on the ``Prediction`` in the front door."""

    def __init__(self, model: ModelDir, batcher: Batcher, budget: MemoryBudget, max_pixels: int):
        self.model, self.batcher, self.budget, self.max_pixels = model, batcher, budget, max_pixels

    def open(self, body: bytes) -> codecs.Upload:  # 1
        return codecs.open_upload(body, self.max_pixels)

    def plan(self, upload: codecs.Upload, request: MapRequest) -> Plan:  # 2
        width, height = request.size.resolve(upload.width, upload.height, self.model)
        need_width, need_height = DCT_MARGIN * self.model.width, DCT_MARGIN * self.model.height
        if request.keep_image:  # the overlay shows the image at map size: decode at least that
            need_width, need_height = max(need_width, width), max(need_height, height)
        scale = upload.dct_scale(need_width, need_height)
        decoded = decode_bytes(*upload.scaled_size(scale)) + upload.coefficient_bytes
        cost = decoded + map_bytes(request, width, height)
        return Plan(upload.width, upload.height, request, width, height, scale, cost, upload)

    def plan_frames(self, frames: np.ndarray, request: MapRequest) -> Plan:
        """Raw pixels, ``frames`` uint8 (N, H, W, 3): one plan that each frame follows, its
        cost for all of them (the frames themselves are counted: the caller holds them)."""
        count, height, width = frames.shape[:3]
        if width * height > self.max_pixels:  # as an upload's: each frame is an image
            raise TooLarge(
                "image_too_large",
                f"frames are {width}x{height} = {width * height} "
                f"pixels each; the limit is {self.max_pixels}",
            )
        map_width, map_height = request.size.resolve(width, height, self.model)
        cost = count * (frames[0].nbytes + map_bytes(request, map_width, map_height))
        return Plan(width, height, request, map_width, map_height, 1, cost)

    async def admit(self, plan: Plan, deadline: float) -> Reservation:  # 3
        return await self.budget.reserve(plan.cost_bytes, deadline)

    def decode(self, plan: Plan) -> tuple[np.ndarray | None, np.ndarray]:  # 4, 5
        """(the image at map size if kept, the model's input (3, H, W))."""
        rgb = codecs.decode(plan.upload, plan.dct_scale)
        kept = None
        if plan.request.keep_image:
            kept = resize_rgb(rgb, plan.map_width, plan.map_height)
        return kept, preprocess(rgb, self.model)

    async def infer(  # 6
        self, image: np.ndarray, tasks: tuple[TaskInfo, ...], deadline: float, gone: ClientGone
    ) -> JobResult | None:
        """The model's answer; ``None`` if the client left first; 504 past the deadline.
        Whatever ends the wait, a job still queued leaves the queue, so the model never runs it."""
        job = self.batcher.submit(image, tuple(t.id for t in tasks), deadline)
        watcher = asyncio.ensure_future(gone())
        reason = "disconnected"  # also when this coroutine itself is cancelled
        try:
            done, _ = await asyncio.wait(
                {job.future, watcher},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if job.future.done():
                return job.future.result()  # raises the job's error (504, 500) if it failed
            if watcher in done:
                return None
            reason = "deadline"
            raise deadline_exceeded()
        finally:
            watcher.cancel()
            if not job.future.done():
                self.batcher.abandon(job, reason)

    async def predict(
        self, body: bytes, request: MapRequest, deadline: float, gone: ClientGone
    ) -> Prediction | None:
        """Stages 1-6 for one uploaded image; ``None`` if the client left. The caller owns the
        returned reservation: it releases it once the response has been sent."""
        started = time.monotonic()
        if opens_on_the_loop(body):
            upload = self.open(body)
        else:
            upload = await asyncio.to_thread(self.open, body)
        plan = self.plan(upload, request)
        reservation = await self.admit(plan, deadline)
        try:
            admitted = time.monotonic()
            if decodes_on_the_loop(upload, plan.dct_scale):
                kept, tensor = self.decode(plan)
            else:
                kept, tensor = await asyncio.to_thread(self.decode, plan)
            decoded = time.monotonic()
            result = await self.infer(tensor, request.tasks, deadline, gone)
        except BaseException:
            reservation.release()
            raise
        if result is None:
            reservation.release()
            return None
        timings = {
            "decode": decoded - admitted,
            "queue": admitted - started + result.queue_s,
            "inference": result.inference_s,
        }
        return Prediction(plan, result, reservation, kept, timings)

    async def predict_frames(
        self, frames: np.ndarray, request: MapRequest, deadline: float, gone: ClientGone
    ) -> list[Prediction] | None:
        """Stages 2-6 for N frames of one size (uint8 (N, H, W, 3), e.g. video): one
        reservation for all, every frame queued at once so that they share batches. ``None``
        if the client left. The predictions share the reservation: release it once."""
        started = time.monotonic()
        plan = self.plan_frames(frames, request)
        reservation = await self.admit(plan, deadline)
        try:
            admitted = time.monotonic()
            tensors = await asyncio.to_thread(self._prepare_frames, frames, plan)
            decoded = time.monotonic()
            results = await asyncio.gather(
                *(self.infer(tensor, request.tasks, deadline, gone) for _, tensor in tensors)
            )
        except BaseException:
            reservation.release()
            raise
        if any(result is None for result in results):
            reservation.release()
            return None
        return [
            Prediction(
                plan,
                result,
                reservation,
                kept,
                {
                    "decode": decoded - admitted,
                    "queue": admitted - started + result.queue_s,
                    "inference": result.inference_s,
                },
            )
            for (kept, _), result in zip(tensors, results, strict=True)
        ]

    def _prepare_frames(self, frames: np.ndarray, plan: Plan) -> list[tuple]:
        kept = plan.request.keep_image
        return [
            (
                resize_rgb(frame, plan.map_width, plan.map_height) if kept else None,
                preprocess(frame, self.model),
            )
            for frame in frames
        ]


def decode_bytes(width: int, height: int) -> int:
    """The most an image decoded at ``width`` x ``height`` holds at once, through preprocess."""
    pixels = width * height
    band = min(pixels, codecs.BAND_PIXELS) * BAND_BYTES_PER_PIXEL
    return pixels * DECODE_BYTES_PER_PIXEL + band + (width + height) * DECODE_BYTES_PER_LINE


def map_bytes(request: MapRequest, width: int, height: int) -> int:
    """What the maps hold at their size and form (and the image, for overlays): the encoders
    work in bands, so this bounds every copy a response makes of them."""
    pixels = width * height
    total = request.copies * sum(
        pixels * (3 if t.kind == "vector" else 1) * request.dtype(t).itemsize for t in request.tasks
    )
    if request.keep_image:
        total += pixels * 3 * (1 + len(request.tasks))  # the image, and each task's overlay
    return total


# Small baseline JPEGs (the usual upload at the model's size) are opened and decoded on the event
# loop: a hand-off to a thread and back costs more than decoding them (128x128: 0.3 ms). Every
# other upload is opened and decoded in a thread, so that no upload can hold the loop: reading a
# PNG's header can inflate its text chunks (up to 64 MB in PIL), a progressive JPEG can carry any
# number of scans, and large images take milliseconds (480x640: 1.3 ms; 40 megapixels: hundreds).
# A JPEG's header is markers only, read in time linear in the body, which is small here.
INLINE_DECODE_PIXELS = 2**16
INLINE_DECODE_BYTES = 2**18
JPEG_MAGIC = b"\xff\xd8\xff"


def opens_on_the_loop(body: bytes) -> bool:
    """A JPEG body of at most ``INLINE_DECODE_BYTES``: its header is read on the event loop."""
    return len(body) <= INLINE_DECODE_BYTES and body.startswith(JPEG_MAGIC)


def decodes_on_the_loop(upload: codecs.Upload, scale: int) -> bool:
    """A small baseline JPEG of at most ``INLINE_DECODE_PIXELS`` decoded pixels: bounded,
    sub-millisecond work."""
    width, height = upload.scaled_size(scale)
    return (
        upload.format == "JPEG"
        and upload.body_bytes <= INLINE_DECODE_BYTES
        and not upload.image.info.get("progressive")
        and width * height <= INLINE_DECODE_PIXELS
    )


def preprocess(rgb: np.ndarray, model: ModelDir) -> np.ndarray:
    """RGB uint8 (h, w, 3) -> normalised float32 (3, H, W) at the model's input size.

    Bilinear resize, then each channel's 256 possible values are normalised once
    (``normalise_table``) and looked up: the same float32 values as ``(rgb / 255 - mean) / std``
    computed per pixel, in one pass.
    """
    rgb = resize_rgb(rgb, model.width, model.height)
    table = normalise_table(model.mean, model.std)  # (3, 256)
    normalised = np.empty((3, *rgb.shape[:2]), np.float32)
    for channel in range(3):
        np.take(table[channel], rgb[..., channel], out=normalised[channel])
    return normalised


def resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


@functools.cache
def normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: ``(v / 255 - mean[c]) / std[c]`` for every uint8 value v, in float32
    steps."""
    values = np.arange(256, dtype=np.float32) / 255.0
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return np.stack([(values - mean32[c]) / std32[c] for c in range(3)])
