"""Accuracy of the exported graphs against PyTorch eager, with the repository's metric code
(``model/evaluate.py``): the checkpoint is exported with ``--int8`` into a temporary directory
and every graph is scored on held-out synthetic scenes, beside the eager model.

    .venv/bin/python -m bench.int8_accuracy demo/ckpt.pt [--split val] [--count 100]

Prints each task's metrics per engine, the primary metric's change against eager, and how
often the int8 graph's label maps agree with the fp32 graph's, pixel by pixel.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from export.contract import read_metadata
from export.to_onnx import export_checkpoint
from model.checkpoint import load_checkpoint
from model.data.sources import eval_source
from model.evaluate import (
    Predictor,
    eval_loader,
    evaluate,
    format_table,
    model_predictor,
    primary,
)
from model.tasks import TASK_NAMES, TASKS


def onnx_predictor(path: Path, tasks: tuple[str, ...], threads: int) -> Predictor:
    """Every image x every task through one ONNX graph, image-major (as ``forward_tasks``)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    ids = np.array([TASK_NAMES.index(task) for task in tasks], np.int64)

    def predict(images: Tensor) -> dict[str, Tensor]:
        batch = images.shape[0]
        feeds = {
            "images": images.numpy(),
            "stream_image": np.repeat(np.arange(batch, dtype=np.int64), len(ids)),
            "stream_task": np.tile(ids, batch),
        }
        outputs = dict(zip(names, session.run(None, feeds), strict=True))
        return {task: torch.from_numpy(outputs[task]) for task in tasks}  # (B, C, H, W) each

    return predict


def label_agreement(first: Predictor, second: Predictor, loader, tasks) -> dict[str, float]:
    """Share of pixels whose argmax label is the same under both predictors."""
    same = dict.fromkeys(tasks, 0)
    total = 0
    for images, _ in loader:
        a, b = first(images), second(images)
        for task in tasks:
            same[task] += int((a[task].argmax(1) == b[task].argmax(1)).sum())
        total += images.shape[0] * images.shape[2] * images.shape[3]
    return {task: count / total for task, count in same.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="val", help="held-out synthetic split: val or test")
    parser.add_argument("--count", type=int, default=100, help="scenes")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, payload = load_checkpoint(args.checkpoint)
    model.eval()
    tasks, dataset = model.config.tasks, model.config.dataset
    size = model.config.backbone.image_size
    loader = eval_loader(eval_source("synthetic", args.split, args.count, size), size, tasks)
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = export_checkpoint(args.checkpoint, Path(workdir), int8=True, name="int8-check")
        metadata = read_metadata(model_dir)
        engines = {"torch eager": model_predictor(model)}
        for mode, entry in metadata.graphs.items():
            engines[f"ORT {mode}"] = onnx_predictor(model_dir / entry.file, tasks, args.threads)
        rows = {
            name: evaluate(predict, loader, tasks, dataset) for name, predict in engines.items()
        }
        fp32 = "ORT " + metadata.graphs["int8"].quantized_from
        classes = tuple(t for t in tasks if TASKS[t].kind == "classes")
        agreement = label_agreement(engines[fp32], engines["ORT int8"], loader, classes)
    print(
        f"checkpoint {args.checkpoint} (step {payload.get('step')}), synthetic {args.split}, "
        f"{args.count} scenes, {size} px"
    )
    print(format_table(rows))
    reference = primary(rows["torch eager"])
    print("\n| engine | " + " | ".join(f"{t} (primary)" for t in tasks) + " |")
    print("| --- |" + " --- |" * len(tasks))
    for name, results in rows.items():
        cells = [f"{v:.2f} ({v - reference[t]:+.2f})" for t, v in primary(results).items()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        "\nint8 vs "
        + fp32
        + " label agreement: "
        + ", ".join(f"{t} {share:.2%}" for t, share in agreement.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
