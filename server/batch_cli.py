"""``python -m server predict-dataset INPUT OUTPUT [--tasks ...] [--format png|npz]
[--model NAME [--model-version V]] [--ray ADDRESS [--actors N]] [server flags]``: the command
around server/batch.py, with a progress bar and a throughput summary. Exit status 0 when every
image was written (or was already), 1 when some failed (each is named on stderr), 2 when the
run could not start."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from tqdm import tqdm

from server.batch import FORMATS, Job, Outcome, list_images, run_here
from server.cli import add_setting_flags, checked_settings
from server.errors import ServingError
from server.modeldir import ModelDirError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server predict-dataset", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("input", type=Path, help="a folder of images, or a file listing them")
    parser.add_argument("output", type=Path, help="the folder the maps go to")
    parser.add_argument("--tasks", help="comma-separated task names (default: all)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="png",
        help="png: one PNG per task (default); npz: one archive per image",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="the repository's model to run (default: the default model)",
    )
    parser.add_argument(
        "--model-version",
        metavar="V",
        help="its version (default: the newest the version policy serves)",
    )
    parser.add_argument("--ray", metavar="ADDRESS", help="run on this Ray cluster (Ray Data)")
    parser.add_argument(
        "--actors",
        type=int,
        default=0,
        help="with --ray: models in the actor pool (default: as many as the cluster fits)",
    )
    add_setting_flags(parser)
    return parser.parse_args(argv)


class Progress:
    """The bar, the failures as they come, and the counts and times for the summary."""

    def __init__(self, total: int, skipped: int) -> None:
        self.counts = {"written": 0, "skipped": skipped, "failed": 0}
        self.started = time.monotonic()
        self.first_written: float | None = None
        self.bar = tqdm(total=total, initial=skipped, unit="image", file=sys.stderr)

    def report(self, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        if outcome.status == "failed":
            self.bar.write(f"failed: {outcome.name}: {outcome.message}", file=sys.stderr)
        elif outcome.status == "written" and self.first_written is None:
            self.first_written = time.monotonic()
        self.bar.update(1)

    def summary(self) -> str:
        self.bar.close()
        elapsed = time.monotonic() - self.started
        written, skipped, failed = (self.counts[k] for k in ("written", "skipped", "failed"))
        line = (
            f"{written} written, {skipped} skipped (already there), {failed} failed; "
            f"{written} in {elapsed:.2f} s = {written / elapsed:.2f} images/s"
        )
        if self.first_written is not None:  # model loading and warm-up (or actors starting)
            line += f"; the first after {self.first_written - self.started:.2f} s"
        return line


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    settings = checked_settings(args)
    if settings is None:
        return 2
    job = Job(
        settings, args.output.resolve(), args.tasks, args.format, args.model, args.model_version
    )
    try:
        names = job.task_names(job.model_dir())
        images = list_images(args.input)
    except (ServingError, ModelDirError, OSError) as error:
        print(f"error: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    todo = [image for image in images if not job.done(image, names)]
    progress = Progress(len(images), len(images) - len(todo))
    if args.ray is not None:
        from server.batch_ray import run_on_ray

        run_on_ray(job, todo, args.ray, args.actors, progress.report)
    else:
        asyncio.run(run_here(job, todo, progress.report))
    print(f"predict-dataset: {len(images)} images: {progress.summary()}", flush=True)
    return 1 if progress.counts["failed"] else 0
