"""Post-processing at camera size, piece by piece, on real demo-model maps.

    .venv/bin/python -m bench.bench_render [--sizes 1152x864,4032x3024,7200x5400] [--repeats 12]

Runs the demo model once on a photo-like JPEG (``bench/images.py``) and times, on its maps:

``restore``: one task per map kind (semseg: classes, saliency: probability, normals: vector)
restored to each size in its uint8 wire form, four ways: ``definition`` (PIL's float32 resize
per channel, then NumPy: ``maps._pil_reference``; class ids by PIL's NEAREST), ``ours``
(``maps.Raster(...).bands()``, the server's), ``cv2`` (OpenCV's SIMD ``cv2.resize``, then the
same NumPy wire forms; class ids by ``INTER_NEAREST`` and ``INTER_NEAREST_EXACT``), ``uint8``
(upsampling in fewer bytes: PIL's uint8 resize of the wire form at model size), with each
one's exactness against the definition (share of equal values, largest difference).

``png``: every task's wire map encoded by ours (``codecs.encode_png_bands``, one Up filter,
ISA-L level 1), PIL (level 1), ``cv2.imencode`` (level 1), ``fpng`` (RGB only) and zlib-ng
(our filter, zlib-ng's level 1 deflate): time and bytes; every file is decoded back and checked.

``render``: all five maps of one JSON response (restore, PNG, base64) in turn on one thread
against one render-pool job per task (``render.each_task``).

Variants alternate (A, B, A, B, ...); medians of wall and CPU time (this process's, every
thread's: ``bench/timing.py``), ms. OpenCV runs on one thread, as one job of the render pool
would. Repeats shrink with the size (at least 3). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import fpng
import numpy as np
from PIL import Image
from zlib_ng import zlib_ng

from bench.images import parse_size, photo_jpeg
from bench.timing import alternate_clocks
from server import codecs, maps, render
from server.batching import JobResult
from server.modeldir import load_model_dir
from server.pipeline import MapRequest, Pipeline, Prediction, preprocess
from server.runtime import ModelRuntime

REPO = Path(__file__).resolve().parents[1]

KIND_TASKS = {"classes": "semseg", "probability": "saliency", "vector": "normals"}
DEFAULT_SIZES = "1152x864,4032x3024,7200x5400"
PNG_LEVEL = 1


def medians(calls: dict, repeats: int) -> dict[str, dict[str, float]]:
    """``{name: {"wall_ms": median, "cpu_ms": median}}`` of the calls run in turn."""
    timed = alternate_clocks(calls, repeats, warmup=1)
    return {
        name: {f"{clock}_ms": round(float(np.median(values)), 3) for clock, values in both.items()}
        for name, both in timed.items()
    }


def repeats_at(pixels: int, repeats: int) -> int:
    return max(3, round(repeats * 1_000_000 / pixels))


# ---------------------------------------------------------------- restore


def restore_calls(kind: str, prediction: np.ndarray, width: int, height: int) -> dict:
    """Zero-argument callables, each giving the uint8 wire map (h, w[, 3])."""
    if kind == "classes":
        ids = maps.class_ids(prediction)
        return {
            "definition": lambda: pil_resize(ids, width, height, Image.Resampling.NEAREST),
            "ours": lambda: raster_bands(kind, prediction, width, height),
            "cv2": lambda: cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST),
            "cv2_exact": lambda: cv2.resize(
                ids, (width, height), interpolation=cv2.INTER_NEAREST_EXACT
            ),
        }
    model_height, model_width = prediction.shape[1:]  # (C, H, W)
    wire_at_model = maps.Raster(kind, prediction, model_width, model_height).array()
    return {
        "definition": lambda: maps._pil_reference(kind, prediction, width, height, np.uint8),
        "ours": lambda: raster_bands(kind, prediction, width, height),
        "cv2": lambda: cv2_wire(kind, prediction, width, height),
        "uint8": lambda: pil_resize(wire_at_model, width, height, Image.Resampling.BILINEAR),
    }


def pil_resize(pixels: np.ndarray, width: int, height: int, method) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((width, height), method))


def raster_bands(kind: str, prediction: np.ndarray, width: int, height: int) -> list:
    """The server's path: the bands, as the encoders draw them (kept here to check them)."""
    return list(maps.Raster(kind, prediction, width, height).bands())


def cv2_wire(kind: str, prediction: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize`` (bilinear, all channels at once) in place of PIL's, then the definitions'
    NumPy steps: clip (probability) or unit vectors (vector), then the wire form."""
    channels_last = np.ascontiguousarray(prediction.transpose(1, 2, 0))  # (H, W, C)
    resized = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR)
    if kind == "probability":
        return maps.to_uint8(kind, np.clip(resized, 0.0, 1.0))
    planes = [resized[..., channel] for channel in range(3)]
    return maps.to_uint8(kind, maps.unit_vectors(planes))


def exactness(got, expected: np.ndarray) -> dict[str, float]:
    if isinstance(got, list):
        got = np.concatenate(got)
    difference = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    return {
        "equal_share": round(float((difference == 0).mean()), 6),
        "max_difference": int(difference.max()),
    }


def restore_rows(model_maps: dict, sizes: list, repeats: int) -> list[dict]:
    rows = []
    for width, height in sizes:
        for kind, task in KIND_TASKS.items():
            calls = restore_calls(kind, model_maps[task], width, height)
            timed = medians(calls, repeats_at(width * height, repeats))
            expected = calls["definition"]()
            for name, call in calls.items():
                rows.append(
                    {
                        "size": f"{width}x{height}",
                        "kind": kind,
                        "task": task,
                        "variant": name,
                        **timed[name],
                        **exactness(call(), expected),
                    }
                )
            del expected
    return rows


# ---------------------------------------------------------------- PNG


def png_calls(wire: np.ndarray) -> dict:
    height, width = wire.shape[:2]
    bands = list(maps_bands(wire))
    calls = {
        "ours": lambda: codecs.encode_png_bands(bands, width, height, PNG_LEVEL),
        "pil": lambda: pil_png(wire),
        "cv2": lambda: cv2_png(wire),
        "zlib_ng": lambda: zlib_ng_png(bands, width, height),
    }
    if wire.ndim == 3:
        calls["fpng"] = lambda: fpng.from_ndarray(wire)
    return calls


def maps_bands(wire: np.ndarray):
    """The wire map in the server's bands (``maps.BAND_PIXELS``)."""
    step = max(1, maps.BAND_PIXELS // wire.shape[1])
    for start in range(0, wire.shape[0], step):
        yield wire[start : start + step]


def pil_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def cv2_png(pixels: np.ndarray) -> bytes:
    bgr = pixels[..., ::-1] if pixels.ndim == 3 else pixels  # OpenCV writes BGR as RGB
    ok, encoded = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return encoded.tobytes()


class ZlibNg:
    """``zlib_ng.compressobj`` where the server's encoder would take ISA-L's."""

    def __enter__(self):
        self._saved = codecs.compressobj
        codecs.compressobj = lambda level: zlib_ng.compressobj(level)

    def __exit__(self, *exc) -> None:
        codecs.compressobj = self._saved


def zlib_ng_png(bands: list, width: int, height: int) -> bytes:
    with ZlibNg():
        return codecs.encode_png_bands(bands, width, height, PNG_LEVEL)


def png_rows(model, model_maps: dict, sizes: list, repeats: int) -> list[dict]:
    rows = []
    for width, height in sizes:
        for task in model.tasks:
            wire = maps.Raster(task.kind, model_maps[task.name], width, height).array()
            calls = png_calls(wire)
            timed = medians(calls, repeats_at(width * height, repeats))
            for name, call in calls.items():
                encoded = call()
                if not np.array_equal(np.asarray(Image.open(io.BytesIO(encoded))), wire):
                    raise SystemExit(f"{name}: the {task.name} PNG decodes to other pixels")
                rows.append(
                    {
                        "size": f"{width}x{height}",
                        "task": task.name,
                        "encoder": name,
                        **timed[name],
                        "bytes": len(encoded),
                    }
                )
    return rows


# ---------------------------------------------------------------- one response's maps


def prediction_for(model, model_maps: dict, width: int, height: int) -> Prediction:
    """The model's maps as the server holds them for an upload of ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "JPEG")  # only its header is read
    upload = codecs.open_upload(buffer.getvalue(), 10**9)
    plan = Pipeline(model, None, None, 10**9).plan(upload, MapRequest(tuple(model.tasks)))
    return Prediction(plan, JobResult(model_maps, {}, {}, 0.0, 0.0, 1), None, None, {})


def render_rows(model, model_maps: dict, sizes: list, repeats: int, threads: int) -> list[dict]:
    rows = []
    pool = ThreadPoolExecutor(threads)
    loop = asyncio.new_event_loop()
    saved = render.PARALLEL_FROM_PIXELS
    try:
        for width, height in sizes:
            prediction = prediction_for(model, model_maps, width, height)

            def respond(split_from: int, prediction=prediction) -> dict:
                render.PARALLEL_FROM_PIXELS = split_from
                work = lambda task: render.task_json(prediction, task, render.Look())  # noqa: E731
                return loop.run_until_complete(
                    render.each_task(pool, prediction, model.tasks, work)
                )

            calls = {"in_turn": lambda r=respond: r(10**12), "job_per_task": lambda r=respond: r(0)}
            timed = medians(calls, repeats_at(width * height, repeats))
            rows.append({"size": f"{width}x{height}", "threads": threads, **timed})
    finally:
        render.PARALLEL_FROM_PIXELS = saved
        pool.shutdown()
        loop.close()
    return rows


def model_maps_of(model) -> dict[str, np.ndarray]:
    runtime = ModelRuntime(model, ["CPUExecutionProvider"], 2)
    image = preprocess(codecs.decode_image(photo_jpeg(1152, 864), 10**9), model)[None]
    task_ids = np.array([t.id for t in model.tasks], np.int64)
    outputs = runtime.run(image, np.zeros(len(task_ids), np.int64), task_ids)
    return {t.name: outputs[t.name][0] for t in model.tasks}  # (C, H, W) each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "demo" / "model")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="width x height, comma-separated")
    parser.add_argument("--repeats", type=int, default=12, help="at 1 MP; fewer when larger")
    parser.add_argument("--parts", default="restore,png,render")
    parser.add_argument("--threads", type=int, default=2, help="render pool threads")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    model = load_model_dir(args.model_dir)
    model_maps = model_maps_of(model)
    sizes = [parse_size(size) for size in args.sizes.split(",")]
    parts = args.parts.split(",")
    results = {"sizes": args.sizes.split(",")}
    if "restore" in parts:
        results["restore"] = restore_rows(model_maps, sizes, args.repeats)
    if "png" in parts:
        results["png"] = png_rows(model, model_maps, sizes, args.repeats)
    if "render" in parts:
        results["render"] = render_rows(model, model_maps, sizes, args.repeats, args.threads)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
