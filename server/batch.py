"""Batch prediction: ``python -m server predict-dataset INPUT OUTPUT [--tasks ...]
[--format png|npz] [--model NAME [--model-version V]] [--ray ADDRESS] [server flags]``.

Every image under the folder INPUT (or listed in the file INPUT, one path a line, relative to
the file's folder) goes through the model with the server's own code: the pipeline's stages
and batcher (server/pipeline.py, server/batching.py), the maps and encoders the responses use
(server/render.py). Its maps are written under OUTPUT at the image's relative path:
``<name>.<task>.png`` per task (each file the bytes of ``POST /predict?tasks=<task>&format=png``)
or one ``<name>.npz`` (the body of ``format=npz``). Each file is written under a temporary name
and renamed, so a file that exists is complete: a rerun skips the images whose files all exist
(resuming a stopped run). An image that cannot be read or served is reported and skipped.

One model version does the work: ``--model`` names it in the repository (``--model-repository``,
or ``--model-dir``'s repository of one, or the demo's), default the default model;
``--model-version``, default the newest the version policy serves.

Without ``--ray`` it runs here, in one process: up to ``max_queue`` images in flight, batched
as the server batches requests. With ``--ray`` the images are spread over a Ray cluster's
actors, each holding one model (server/batch_ray.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from server import render
from server.errors import ServingError
from server.modeldir import ModelDir
from server.pipeline import MapRequest
from server.repository import pick_model
from server.routes.native import Options, map_dtypes, parse_tasks
from server.settings import Settings
from server.state import ServerState, load_state, warm_up

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
FORMATS = ("png", "npz")


@dataclass(frozen=True)
class Image:
    name: str  # its path relative to the input (posix): where its maps go under OUTPUT
    path: str  # where it is read from


@dataclass(frozen=True)
class Job:
    """Which maps and where they go; picklable, so Ray actors receive it whole."""

    settings: Settings
    output: Path
    tasks: str | None = None  # comma-separated, as /predict's query; None: all of the model's
    format: str = "png"
    model: str | None = None  # the repository's model; None: the default model
    version: str | None = None  # None: the newest the version policy serves

    def model_dir(self) -> ModelDir:
        """The model version that does the work, checked (``ModelDirError`` says why not)."""
        return pick_model(self.settings, self.model, self.version)

    def task_names(self, model: ModelDir) -> list[str]:
        """Checked against the model: an unknown or repeated name raises ``InvalidParameter``."""
        return [t.name for t in parse_tasks(self.tasks, model)]

    def outputs(self, image: Image, task_names: Iterable[str]) -> list[Path]:
        """The files one image's maps go to."""
        relative = Path(image.name)
        folder, stem = self.output / relative.parent, relative.name
        if self.format == "npz":
            return [folder / f"{stem}.npz"]
        return [folder / f"{stem}.{task}.png" for task in task_names]

    def done(self, image: Image, task_names: Iterable[str]) -> bool:
        return all(path.is_file() for path in self.outputs(image, task_names))


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # "written", "skipped" (already there) or "failed"
    message: str = ""


def list_images(source: Path) -> list[Image]:
    """A folder's images, recursively, or the paths a list file names (blank lines and ``#``
    comments ignored; a path outside the file's folder keeps its whole path as its name)."""
    source = source.resolve()
    if source.is_dir():
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return [Image(p.relative_to(source).as_posix(), str(p)) for p in found if p.is_file()]
    images = []
    for line in source.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            path = (source.parent / line).resolve()
            base = source.parent if path.is_relative_to(source.parent) else Path(path.anchor)
            images.append(Image(path.relative_to(base).as_posix(), str(path)))
    return images


class MapWriter:
    """Predicts images and writes their maps, with a running server's state (one model)."""

    def __init__(self, state: ServerState, job: Job) -> None:
        self.state, self.job = state, job
        self.tasks = parse_tasks(job.tasks, state.model)
        self.task_names = [t.name for t in self.tasks]
        # The maps /predict makes by default: at the image's size, in the format's forms
        dtypes = map_dtypes(self.tasks, Options(format=job.format))
        self.request = MapRequest(self.tasks, dtypes=dtypes)
        self.look = render.Look(compress_level=state.settings.png_compression)

    async def write(self, image: Image) -> Outcome:
        """One image: skipped if its files exist, else predicted and written; any failure of
        this image is its outcome, never an exception."""
        if self.job.done(image, self.task_names):
            return Outcome(image.name, "skipped")
        try:
            body = await asyncio.to_thread(Path(image.path).read_bytes)
            await self._predict_and_write(image, body)
        except ServingError as error:
            return Outcome(image.name, "failed", f"{error.code}: {error.message}")
        except Exception as error:  # a bad file must not stop the run
            return Outcome(image.name, "failed", f"{type(error).__name__}: {error}")
        return Outcome(image.name, "written")

    async def _predict_and_write(self, image: Image, body: bytes) -> None:
        deadline = time.monotonic() + self.state.settings.timeout_s
        prediction = await self.state.pipeline.predict(body, self.request, deadline, _never_gone)
        del body
        try:
            targets = self.job.outputs(image, self.task_names)
            if self.job.format == "npz":
                chunks = render.npz_chunks(self.state.model, prediction, self.tasks, False)
                await asyncio.to_thread(write_atomically, targets[0], chunks)
                return
            pngs = await render.each_task(
                self.state.render_pool,
                prediction,
                self.tasks,
                lambda task: render.task_png(prediction, task, self.look),
            )
            for task, target in zip(self.tasks, targets, strict=True):
                await asyncio.to_thread(write_atomically, target, [pngs[task.name]])
        finally:
            prediction.reservation.release()


async def _never_gone() -> None:
    """A batch job has no client to lose: the pipeline waits on this forever."""
    await asyncio.Event().wait()


def write_atomically(target: Path, chunks: Iterable[bytes]) -> None:
    """Write under a temporary name in the same folder, then rename: readers and reruns see
    the whole file or none of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with partial.open("wb") as file:
            for chunk in chunks:
                file.write(chunk)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


@asynccontextmanager
async def running_state(
    settings: Settings, model: ModelDir | None = None
) -> AsyncIterator[ServerState]:
    """One model version's state without HTTP (default: the settings' default model): loaded,
    batching and warmed up; drained on exit."""
    state = await asyncio.to_thread(load_state, settings, model)
    state.batcher.start()
    try:
        await asyncio.to_thread(warm_up, state)
        state.ready = True
        yield state
    finally:
        await state.batcher.stop(settings.shutdown_timeout_s)
        await asyncio.to_thread(state.render_pool.shutdown, True)


async def write_all(
    writer: MapWriter, images: Iterable[Image], report: Callable[[Outcome], None]
) -> None:
    """Every image through ``writer``, up to ``max_queue`` at once (the batcher makes batches
    of them), each outcome reported as it comes."""
    slots = asyncio.Semaphore(writer.state.settings.max_queue)

    async def one(image: Image) -> None:
        async with slots:
            report(await writer.write(image))

    await asyncio.gather(*(one(image) for image in images))


async def run_here(job: Job, images: list[Image], report: Callable[[Outcome], None]) -> None:
    """The plain run: one model in this process."""
    async with running_state(job.settings, job.model_dir()) as state:
        await write_all(MapWriter(state, job), images, report)
