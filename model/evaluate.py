"""Evaluate a checkpoint with the benchmark's protocols (``model/metrics.py``): a table and JSON.

    python -m model.evaluate runs/demo/ckpt.pt --data synthetic --split test --count 200
    python -m model.evaluate ckpt.pt --data /data/PASCAL_MT --reference ref.json --json out.json

``--data synthetic`` renders held-out procedural scenes (split ``val`` or ``test``; training
only ever sees ``train``); any other value is the root of a PASCAL_MT tree. ``--baselines``
adds trivial predictors scored by the same code: the majority class of ``classes`` tasks, the
mean normal, and constant probabilities 0 (all-background) and 1 (all-foreground).
Edge odsF is an approximation of SEISM's (see ``EdgeMetrics``); saliency's primary number is
the MTI-Net mIoU that ASE reports. Δm uses each task's primary metric (``PRIMARY_METRIC``).
Scoring is at each image's original size (``--resolution original``, the benchmark's): the
image is resized to the model's input, each prediction back to the image's size by the
server's rules; ``--resolution fixed`` scores labels resized to the model's input instead.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from model.cli import add_split_arguments, run, split_from_args
from model.data import NORMALS_VALID
from model.data.sources import data_config, train_source
from model.data.transforms import (
    EvalTransform,
    MultiTaskDataset,
    OriginalSizeDataset,
    collate,
    collate_eval,
    restore_size,
)
from model.heads import postprocess
from model.metrics import PRIMARY_METRIC, NormalsMetrics, delta_m, task_metric
from model.model import ASEModel
from model.photo_eval import is_photo_set, photo_main
from model.tasks import TASKS, require_dataset

Predictor = Callable[[Tensor], dict[str, Tensor]]
"""images (B, 3, H, W) -> post-processed predictions per task, each (B, C, H, W)."""


RESOLUTIONS = ("original", "fixed")
"""``original``: every image scored at its own size, predictions resized back (the benchmark's
protocol, InvPT family); ``fixed``: labels resized to the model's input size (cheaper; not
comparable with published numbers when the images have other sizes)."""


def eval_loader(
    source, size: int, tasks: Iterable[str], batch_size: int = 16, resolution: str = "original"
) -> DataLoader:
    """Batches of model-size images with their labels at ``resolution`` (``RESOLUTIONS``)."""
    if resolution == "original":
        dataset = OriginalSizeDataset(source, size, tuple(tasks))
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_eval)
    if resolution != "fixed":
        raise ValueError(f"unknown resolution {resolution!r}; known: {', '.join(RESOLUTIONS)}")
    dataset = MultiTaskDataset(source, EvalTransform(size), tuple(tasks))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


def model_predictor(model: ASEModel, device: torch.device | str = "cpu") -> Predictor:
    """Every image x every task of the model, post-processed per kind."""

    @torch.no_grad()
    def predict(images: Tensor) -> dict[str, Tensor]:
        out = model.forward_tasks(images.to(device), model.config.tasks)
        return {t: postprocess(TASKS[t].kind, raw).float().cpu() for t, raw in out.maps.items()}

    return predict


def _metric_input(kind: str, prediction: Tensor) -> np.ndarray:
    """(B, C, h, w) prediction -> what the metric takes: class ids (B, h, w), probabilities
    (B, h, w) or vectors (B, 3, h, w)."""
    if kind == "classes":
        return prediction.argmax(dim=1).numpy()
    if kind == "probability":
        return prediction[:, 0].numpy()
    return prediction.numpy()


def _at_label_size(
    predictions: dict[str, np.ndarray], targets: dict[str, Any]
) -> Iterable[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(predictions, targets) pairs of equal sizes: the batch itself when its labels have the
    predictions' size, else image by image with each prediction restored to its labels' size
    (``restore_size``, the server's rules). ``targets`` values: stacked tensors, or lists of
    per-image tensors when the images' sizes differ (``collate_eval``)."""
    some = next(iter(predictions.values()))
    labels = next(iter(targets.values()))
    if isinstance(labels, Tensor) and labels.shape[-2:] == some.shape[-2:]:
        yield predictions, {key: value.numpy() for key, value in targets.items()}
        return
    for index in range(some.shape[0]):
        image_targets = {key: value[index].numpy()[None] for key, value in targets.items()}
        size = image_targets[next(iter(targets))].shape[-2:]
        restored = {
            task: restore_size(TASKS[task].kind, p[index], size)[None]
            for task, p in predictions.items()
        }
        yield restored, image_targets


def _update(metric, task: str, prediction: np.ndarray, targets: dict[str, np.ndarray]) -> None:
    if TASKS[task].kind == "vector":
        metric.update(prediction, targets[task], valid=targets[NORMALS_VALID])
    else:
        metric.update(prediction, targets[task])


def evaluate(
    predict: Predictor, loader: DataLoader, tasks: Iterable[str], dataset: str
) -> dict[str, dict[str, Any]]:
    """Run ``predict`` over the loader and return each task's ``compute()`` dict. With both
    normals and saliency, normals also get ``fg_*`` scores on salient pixels only: on the
    synthetic scenes a constant normal is already close on the background plane, so the
    foreground shows what the head learned about shape."""
    spec = require_dataset(dataset)
    tasks = tuple(tasks)
    metrics = {t: task_metric(t, len(spec.classes(t) or ()) or None) for t in tasks}
    foreground = NormalsMetrics() if {"normals", "saliency"} <= set(tasks) else None
    for images, batch_targets in loader:
        raw = predict(images)
        inputs = {task: _metric_input(TASKS[task].kind, raw[task]) for task in tasks}
        for predictions, targets in _at_label_size(inputs, batch_targets):
            for task, metric in metrics.items():
                _update(metric, task, predictions[task], targets)
            if foreground is not None:
                valid = targets[NORMALS_VALID] & (targets["saliency"] == 1)  # (B, H, W)
                foreground.update(predictions["normals"], targets["normals"], valid=valid)
    results = {task: metric.compute() for task, metric in metrics.items()}
    if foreground is not None and foreground.count:
        results["normals"] |= {f"fg_{k}": v for k, v in foreground.compute().items()}
    return results


def primary(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Task -> its primary metric (the number tables and Δm use)."""
    return {task: float(values[PRIMARY_METRIC[task]]) for task, values in results.items()}


def flat_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{"semseg/mIoU": ..., ...}``: the scalar metrics, as a checkpoint stores them."""
    return {
        f"{task}/{name}": float(value)
        for task, values in results.items()
        for name, value in values.items()
        if isinstance(value, int | float)
    }


# ---------------------------------------------------------------- trivial baselines


def fit_constants(source, tasks: Iterable[str], dataset: str, images: int = 64) -> dict:
    """Statistics of the first ``images`` samples: majority class per ``classes`` task (over
    labelled pixels) and the mean valid normal (renormalised)."""
    spec = require_dataset(dataset)
    tasks = tuple(tasks)
    counts = {t: np.zeros(len(spec.classes(t)), np.int64) for t in tasks if spec.classes(t)}
    normal_sum = np.zeros(3)
    for index in range(min(images, len(source))):
        sample = source[index]
        for task, histogram in counts.items():
            labels = getattr(sample, task)
            histogram += np.bincount(labels[labels < len(histogram)], minlength=len(histogram))
        normal_sum += sample.normals[sample.normals_valid].sum(axis=0)
    constants: dict[str, Any] = {t: int(h.argmax()) for t, h in counts.items()}
    constants["normals"] = (normal_sum / max(np.linalg.norm(normal_sum), 1e-12)).tolist()
    return constants


def constant_predictor(
    constants: Mapping[str, Any], tasks: Iterable[str], dataset: str, probability: float
) -> Predictor:
    """The same prediction at every pixel: a class, a normal, or ``probability``."""
    spec = require_dataset(dataset)
    tasks = tuple(tasks)

    def predict(images: Tensor) -> dict[str, Tensor]:
        batch, _, height, width = images.shape
        out = {}
        for task in tasks:
            kind = TASKS[task].kind
            if kind == "classes":
                logits = torch.zeros(batch, spec.channels(task), height, width)
                logits[:, constants[task]] = 1.0
                out[task] = logits
            elif kind == "vector":
                normal = torch.tensor(constants["normals"], dtype=torch.float32)
                out[task] = normal.view(1, 3, 1, 1).expand(batch, 3, height, width)
            else:
                out[task] = torch.full((batch, 1, height, width), probability)
        return out

    return predict


def baseline_results(
    source, loader: DataLoader, tasks: tuple[str, ...], dataset: str, fit_source
) -> dict[str, dict[str, dict[str, Any]]]:
    """Scores of the trivial predictors, fitted on ``fit_source`` (training data)."""
    constants = fit_constants(fit_source, tasks, dataset)
    return {
        name: evaluate(constant_predictor(constants, tasks, dataset, p), loader, tasks, dataset)
        for name, p in (("majority / mean normal / all-background", 0.0), ("all-foreground", 1.0))
    }


# ---------------------------------------------------------------- reporting


def read_reference(path: str | Path) -> dict[str, float]:
    """A reference for Δm: ``{"semseg": 40.1, ...}`` (primary metrics) or an evaluate JSON."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and "results" in data:
        return primary(data["results"])
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise ValueError(f"{path}: expected {{task: number}} or an evaluate.py JSON")
    return {task: float(value) for task, value in data.items()}


TABLE_COLUMNS = {
    "semseg": ("mIoU", "pixel_accuracy"),
    "parts": ("mIoU", "pixel_accuracy"),
    "saliency": ("mti_mIoU", "maxF", "mti_maxF"),
    "normals": (
        "mean",
        "median",
        "rmse",
        "under_11.25",
        "under_22.5",
        "under_30",
        "fg_mean",
        "fg_median",
        "fg_under_11.25",
        "fg_under_30",
    ),
    "edges": ("odsF", "ods_threshold", "bce"),
}


def format_table(rows: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Markdown: one line per (row name, task), the task's metrics in a fixed order."""
    lines = ["| model | task | metrics |", "| --- | --- | --- |"]
    for row, results in rows.items():
        for task, values in results.items():
            cells = ", ".join(f"{k} {values[k]:.2f}" for k in TABLE_COLUMNS[task] if k in values)
            lines.append(f"| {row} | {task} | {cells} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    add_split_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--resolution",
        default="original",
        choices=RESOLUTIONS,
        help="original: each image at its own size (the benchmark's); "
        "fixed: labels resized to the model's input",
    )
    parser.add_argument("--baselines", action="store_true", help="also score trivial predictors")
    parser.add_argument("--reference", type=Path, help="JSON of reference metrics for Δm")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="*",
        default=[],
        help="photo sets: more checkpoints scored beside the first (e.g. demo/ckpt.pt)",
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from model.checkpoint import load_checkpoint  # here: keeps `--help` fast

    args = _parser().parse_args(argv)
    if is_photo_set(args.data):
        return photo_main(args)
    model, payload = load_checkpoint(args.checkpoint)
    model.to(args.device)
    config = model.config
    size = config.backbone.image_size
    source = split_from_args(args, size)
    loader = eval_loader(source, size, config.tasks, args.batch_size, args.resolution)
    rows = {
        "model": evaluate(model_predictor(model, args.device), loader, config.tasks, config.dataset)
    }
    if args.baselines:
        fit = train_source(data_config(args.data, args.seed), size)  # constants: its first images
        rows |= baseline_results(source, loader, config.tasks, config.dataset, fit)
    report: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "step": payload.get("step"),
        "data": args.data,
        "split": args.split,
        "resolution": args.resolution,
        "images": len(source),
        "results": rows["model"],
        "primary": primary(rows["model"]),
        "baselines": {k: v for k, v in rows.items() if k != "model"},
    }
    if args.reference:
        report["delta_m"] = delta_m(report["primary"], read_reference(args.reference))
    print(format_table(rows))
    if "delta_m" in report:
        print(f"Δm vs {args.reference}: {report['delta_m']:+.2f}%")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


def cli() -> None:
    run(main)


if __name__ == "__main__":
    cli()
