"""What decoding camera-size JPEGs in the DCT domain does to the model's answers (issue 12).

    .venv/bin/python -m bench.reduced_decode [--sizes 1920x1080:36,4032x3024:12] [--eval-side 640]

For each size, validation scenes of ``model/data/synthetic.py`` are rendered at that size, saved
as JPEG (quality 90) and decoded by the server's path twice: at the scale ``Pipeline.plan`` picks
(1/2, 1/4 or 1/8 in the DCT domain: ``codecs.decode(upload, scale)``) and at full size (scale 1),
then preprocessed and run through the demo model (ONNX Runtime, one batch of both). Reported
per task:

- agreement at upload size, maps in their wire form (``maps.Raster``, uint8): the share of equal
  values (class labels, 0-255 probabilities, RGB normals' channels) and the mean and largest
  difference between the two;
- each task's metric (``model/metrics.py``) with and without the reduced decode, at an evaluation
  size (longest side ``--eval-side``, the scene's labels rendered there from the same geometry,
  the maps restored there by ``maps.Raster`` as float32 values; edges' boundary metric at
  camera size would take minutes per image).

Prints JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.images import parse_size
from model.data.synthetic import SyntheticScenes
from model.metrics import PRIMARY_METRIC, NormalsMetrics, task_metric
from server import codecs, maps
from server.modeldir import load_model_dir
from server.pipeline import MapRequest, Pipeline, preprocess
from server.runtime import ModelRuntime

REPO = Path(__file__).resolve().parents[1]

WAYS = ("reduced", "full")
MAX_PIXELS = 10**9


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def model_inputs(body: bytes, pipeline: Pipeline) -> tuple[int, np.ndarray]:
    """(the scale the server decodes this JPEG at, the model's inputs (2, 3, H, W): at that
    scale, then at full size)."""
    plan = pipeline.plan(codecs.open_upload(body, MAX_PIXELS), MapRequest(pipeline.model.tasks))
    inputs = []
    for scale in (plan.dct_scale, 1):
        rgb = codecs.decode(codecs.open_upload(body, MAX_PIXELS), scale)  # a fresh upload each
        inputs.append(preprocess(rgb, pipeline.model))
    return plan.dct_scale, np.stack(inputs)


class Agreement:
    """Per task, the two ways' wire maps at upload size compared value by value."""

    def __init__(self) -> None:
        self.equal: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.difference_sum: dict[str, int] = {}
        self.largest: dict[str, int] = {}

    def update(self, task, predictions: list[np.ndarray], width: int, height: int) -> None:
        first, second = (maps.Raster(task.kind, p, width, height).array() for p in predictions)
        difference = np.abs(first.astype(np.int16) - second.astype(np.int16))
        name = task.name
        self.equal[name] = self.equal.get(name, 0) + int((difference == 0).sum())
        self.total[name] = self.total.get(name, 0) + difference.size
        self.difference_sum[name] = self.difference_sum.get(name, 0) + int(difference.sum())
        self.largest[name] = max(self.largest.get(name, 0), int(difference.max()))

    def report(self) -> dict[str, dict]:
        return {
            name: {
                "equal_share": round(self.equal[name] / self.total[name], 6),
                "mean_difference": round(self.difference_sum[name] / self.total[name], 4),
                "max_difference": self.largest[name],
            }
            for name in self.total
        }


class Scores:
    """Per way and task, ``model/metrics.py``'s accumulator at the evaluation size."""

    def __init__(self, model) -> None:
        self.metrics = {
            way: {t.name: task_metric(t.name, len(t.classes or ()) or None) for t in model.tasks}
            for way in WAYS
        }

    def update(self, way: str, task, prediction: np.ndarray, labels) -> None:
        height, width = labels.image.shape[:2]
        if task.kind == "classes":
            values = maps.Raster(task.kind, prediction, width, height).array()
        else:
            values = maps.Raster(task.kind, prediction, width, height, np.float32).array()
        metric, target = self.metrics[way][task.name], getattr(labels, task.name)
        if isinstance(metric, NormalsMetrics):  # channels first, as the metric takes them
            metric.update(
                values.transpose(2, 0, 1), target.transpose(2, 0, 1), valid=labels.normals_valid
            )
        else:
            metric.update(values, target)

    def report(self) -> dict[str, dict]:
        results = {}
        for name in self.metrics[WAYS[0]]:
            computed = {way: self.metrics[way][name].compute() for way in WAYS}
            key = PRIMARY_METRIC[name]
            values = {way: round(float(computed[way][key]), 4) for way in WAYS}
            delta = round(values["reduced"] - values["full"], 4)
            results[name] = {"metric": key, **values, "reduced_minus_full": delta}
        return results


def evaluate_size(model, runtime, size: tuple[int, int], count: int, eval_side: int) -> dict:
    width, height = size
    shrink = eval_side / max(width, height)
    eval_size = (max(8, round(height * shrink)), max(8, round(width * shrink)))  # (h, w)
    scenes = SyntheticScenes((height, width), count, split="val")
    labels = SyntheticScenes(eval_size, count, split="val")
    pipeline = Pipeline(model, None, None, MAX_PIXELS)
    task_ids = np.array([t.id for t in model.tasks], np.int64)
    streams = np.repeat(np.arange(2, dtype=np.int64), len(task_ids))  # (10,): image 0, then 1
    agreement, scores, scales, body_bytes = Agreement(), Scores(model), set(), []
    started = time.perf_counter()
    for index in range(count):
        body = jpeg(scenes[index].image)
        body_bytes.append(len(body))
        scale, inputs = model_inputs(body, pipeline)
        scales.add(scale)
        outputs = runtime.run(inputs, streams, np.tile(task_ids, 2))
        truth = labels[index]  # rendered on each access: once per scene
        for task in model.tasks:
            predictions = [outputs[task.name][way] for way in range(2)]  # (C, H, W) each
            agreement.update(task, predictions, width, height)
            for way, prediction in zip(WAYS, predictions, strict=True):
                scores.update(way, task, prediction, truth)
    return {
        "size": f"{width}x{height}",
        "scenes": count,
        "dct_scales": sorted(scales),
        "jpeg_bytes_median": int(np.median(body_bytes)),
        "eval_size": f"{eval_size[1]}x{eval_size[0]}",
        "agreement_at_upload_size": agreement.report(),
        "metrics": scores.report(),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "demo" / "model")
    parser.add_argument(
        "--sizes", default="1920x1080:36,4032x3024:12", help="WIDTHxHEIGHT:SCENES, comma-separated"
    )
    parser.add_argument("--eval-side", type=int, default=640, help="metrics' longest side")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = load_model_dir(args.model_dir)
    runtime = ModelRuntime(model, ["CPUExecutionProvider"], args.threads)
    rows = []
    for entry in args.sizes.split(","):
        size, _, count = entry.partition(":")
        rows.append(evaluate_size(model, runtime, parse_size(size), int(count), args.eval_side))
    print(json.dumps({"model": str(args.model_dir), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
