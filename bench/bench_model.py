"""Model speed on this machine: PyTorch eager vs ONNX Runtime dense vs sparse dispatch,
1 / 3 / 5 tasks, ASE vs the same backbone without adapters, and achieved GFLOP/s against the
model's counted FLOPs and a 2-thread fp32 GEMM peak measured in the same run.

    .venv/bin/python bench/bench_model.py [--sizes demo vits] [--repeats 15] [--threads 2]

Weights are random (speed does not depend on them); the models are exported to a temporary
directory with the real exporter. Medians over ``--repeats`` runs after 3 warm-up runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from export.to_onnx import export_model_dir  # noqa: E402
from model.config import AdapterConfig, BackboneConfig, ModelConfig  # noqa: E402
from model.model import ASEModel  # noqa: E402
from model.tasks import TASK_NAMES  # noqa: E402

SIZES = {
    "demo": BackboneConfig(),  # 128 px, patch 16, width 192, depth 6
    "vits": BackboneConfig(image_size=224, width=384, depth=12, heads=6),  # ViT-S/16 224
}
TASK_COUNTS = (1, 3, 5)


@dataclass(frozen=True)
class Row:
    size: str
    model: str
    engine: str
    tasks: int
    ms: float
    gflop: float

    @property
    def gflops_per_s(self) -> float:
        return self.gflop / (self.ms / 1e3)


def median_ms(call: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def gemm_peak_gflops(threads: int, repeats: int) -> float:
    """fp32 GEMM (1024 x 1536 x 384 x 4, a ViT-S FFN shape) in torch with ``threads``."""
    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 384), torch.randn(384, 1536)
    ms = median_ms(lambda: a @ b, repeats * 4)
    return 2 * 4096 * 384 * 1536 / (ms / 1e3) / 1e9


def random_model(backbone: BackboneConfig, routing: str) -> ASEModel:
    torch.manual_seed(0)
    config = ModelConfig(backbone=backbone, adapters=AdapterConfig("16/3/1/4", routing))
    model = ASEModel(config).eval()
    with torch.no_grad():  # adapters' B start at zero: give them values, as after training
        for name, parameter in model.named_parameters():
            if name.endswith(".B"):
                parameter.normal_(0, 0.02)
    return model


def streams(tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image, the first ``tasks`` tasks."""
    return torch.zeros(tasks, dtype=torch.int64), torch.arange(tasks)


def counted_gflop(model: ASEModel, images: torch.Tensor, tasks: int) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images, *streams(tasks))
    return counter.get_total_flops() / 1e9


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_size(name: str, threads: int, repeats: int, workdir: Path) -> list[Row]:
    backbone = SIZES[name]
    size = backbone.image_size
    images = torch.randn(1, 3, size, size)
    rows = []
    for routing in ("ase", "none"):
        model = random_model(backbone, routing)
        merged = model.merge()
        model_dir = export_model_dir(model, workdir / f"{name}-{routing}", dispatch="auto")
        engines: dict[str, Callable[[int], Callable[[], object]]] = {
            "torch eager": lambda t, m=merged: lambda: _eager(m, images, t)
        }
        for graph in sorted(model_dir.glob("model.*.onnx")):
            engines[f"ORT {graph.stem.split('.')[1]}"] = _ort_call(session(graph, threads), images)
        for tasks in TASK_COUNTS:
            gflop = counted_gflop(merged, images, tasks)
            for engine, make in engines.items():
                ms = median_ms(make(tasks), repeats)
                rows.append(Row(name, routing, engine, tasks, ms, gflop))
                print(f"{name} {routing} {engine} {tasks} tasks: {ms:.2f} ms", flush=True)
    return rows


def _eager(model: ASEModel, images: torch.Tensor, tasks: int) -> None:
    with torch.no_grad():
        model(images, *streams(tasks))


def _ort_call(sess: ort.InferenceSession, images: torch.Tensor):
    def make(tasks: int) -> Callable[[], object]:
        feeds = {
            "images": images.numpy(),
            "stream_image": np.zeros(tasks, np.int64),
            "stream_task": np.arange(tasks, dtype=np.int64),
        }
        return lambda: sess.run(None, feeds)

    return make


def markdown(rows: list[Row], peak: float) -> str:
    lines = [
        f"fp32 GEMM peak measured in this run: **{peak:.0f} GFLOP/s**",
        "",
        "| size | adapters | engine | tasks | median ms | counted GFLOP | GFLOP/s | % of peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.size} | {r.model} | {r.engine} | {r.tasks} | {r.ms:.2f} | {r.gflop:.2f} | "
            f"{r.gflops_per_s:.0f} | {100 * r.gflops_per_s / peak:.0f}% |"
        )
    return "\n".join(lines)


def ratios(rows: list[Row]) -> str:
    """The issue's targets, computed from the table."""
    lines = []
    for size in dict.fromkeys(r.size for r in rows):
        pick = {(r.model, r.engine, r.tasks): r.ms for r in rows if r.size == size}
        best = min((e for m, e, _ in pick if m == "ase" and e != "torch eager"),
                   key=lambda e: pick[("ase", e, 5)])  # fmt: skip
        eager_1, best_1, best_5 = (
            pick[("ase", "torch eager", 1)],
            pick[("ase", best, 1)],
            pick[("ase", best, 5)],
        )
        bare_5 = pick[("none", "ORT dense", 5)]
        lines += [
            f"- {size}: fastest exported graph for 5 tasks: {best}",
            f"  - eager / {best}, 1 task: {eager_1 / best_1:.2f}x",
            f"  - 1 task / 5 tasks ({best}): {best_1 / best_5:.2f}",
            f"  - adapter overhead, 5 tasks ({best} vs none/ORT dense): {best_5 / bare_5 - 1:+.1%}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    peak = gemm_peak_gflops(args.threads, args.repeats)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.sizes:
            rows += bench_size(name, args.threads, args.repeats, Path(workdir))
    print(markdown(rows, peak))
    print(ratios(rows))
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, tasks {TASK_NAMES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
