"""Post-processing of one response, piece by piece: PIL's PNG encoder against the server's
(`server/codecs.py:encode_png`, one "Up" filter), and the maps rendered in turn on the event loop
against one render-pool job per task.

    .venv/bin/python bench/bench_render.py [--model-dir demo/model] [--repeats 40]

Runs the demo model once on a synthetic JPEG to get real maps, then times each variant on
them, A and B alternating, and prints medians (ms) and PNG sizes as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_server import synthetic_jpeg  # noqa: E402

from bench.timing import alternate  # noqa: E402
from server import codecs, render  # noqa: E402
from server.batching import JobResult  # noqa: E402
from server.maps import restore_size, to_uint8  # noqa: E402
from server.modeldir import load_model_dir  # noqa: E402
from server.pipeline import MapRequest, Pipeline, Prediction, preprocess  # noqa: E402
from server.runtime import ModelRuntime  # noqa: E402


def pil_png(pixels: np.ndarray, level: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def alternating_medians(variants: dict, repeats: int) -> dict[str, float]:
    """Median ms of each zero-argument callable, run in turn (``bench/timing.py``)."""
    return {name: round(float(np.median(t)), 3) for name, t in alternate(variants, repeats).items()}


def encoders(model, maps, height: int, width: int, repeats: int) -> list[dict]:
    rows = []
    for task in model.tasks:
        wire = to_uint8(task.kind, restore_size(task.kind, maps[task.name], width, height))
        variants = {
            "pil": lambda w=wire: pil_png(w, 1),
            "server": lambda w=wire: codecs.encode_png(w, 1),
        }
        medians = alternating_medians(variants, repeats)
        ours = codecs.encode_png(wire, 1)
        if not np.array_equal(np.asarray(Image.open(io.BytesIO(ours))), wire):
            raise SystemExit(f"{task.name}: the server's PNG decodes to other pixels")
        sizes = {"pil_bytes": len(pil_png(wire, 1)), "server_bytes": len(ours)}
        rows.append({"image": f"{height}x{width}", "task": task.name, **medians, **sizes})
    return rows


def prediction_for(model, maps, height: int, width: int) -> Prediction:
    """The model's maps as the server holds them for an upload of ``width`` x ``height``."""
    upload = codecs.open_upload(synthetic_jpeg(height, width), 10**9)
    plan = Pipeline(model, None, None, 10**9).plan(upload, MapRequest(tuple(model.tasks)))
    return Prediction(plan, JobResult(maps, {}, {}, 0.0, 0.0, 1), None, None, {})


def render_jobs(model, maps, height: int, width: int, repeats: int) -> dict:
    prediction = prediction_for(model, maps, height, width)
    pool = ThreadPoolExecutor(2)
    loop = asyncio.new_event_loop()

    def encode(split_from: int):
        render.PARALLEL_FROM_PIXELS = split_from
        work = lambda task: render.task_json(prediction, task, render.Look())  # noqa: E731
        return loop.run_until_complete(render.each_task(pool, prediction, model.tasks, work))

    variants = {"in_turn": lambda: encode(10**12), "job_per_task": lambda: encode(0)}
    medians = alternating_medians(variants, repeats)
    pool.shutdown()
    loop.close()
    return {"image": f"{height}x{width}", **medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "demo" / "model")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    model = load_model_dir(args.model_dir)
    runtime = ModelRuntime(model, ["CPUExecutionProvider"], 2)
    sizes = [(model.height, model.width), (480, 640)]
    image = preprocess(codecs.decode_image(synthetic_jpeg(480, 640), 10**9), model)[None]
    task_ids = np.array([t.id for t in model.tasks], np.int64)
    outputs = runtime.run(image, np.zeros(len(task_ids), np.int64), task_ids)
    maps = {t.name: outputs[t.name][0] for t in model.tasks}  # (C, H, W) each
    results = {
        "png": [row for h, w in sizes for row in encoders(model, maps, h, w, args.repeats)],
        "render": [render_jobs(model, maps, h, w, args.repeats) for h, w in sizes],
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
