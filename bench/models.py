"""The models the speed benchmarks time and the calls that run them: random-weight ASE models
at the benchmark sizes (bench/bench_model.py, bench/profile_model.py, bench/bench_server.py's
``--random-model``, bench/gpu_check.py), their counted FLOPs, and, per task count, one call of
PyTorch eager or of an ONNX Runtime CPU session on one image.

Weights are random: speed does not depend on their values."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from model.config import AdapterConfig, BackboneConfig, ModelConfig
from model.model import ASEModel

SIZES = {
    "demo": BackboneConfig(),  # 128 px, patch 16, width 192, depth 6
    "vits": BackboneConfig(image_size=224, width=384, depth=12, heads=6),  # ViT-S/16 224
}

CallsByTasks = Callable[[int], Callable[[], object]]
"""Task count -> one timed call on one image with that many tasks."""


def random_model(backbone: BackboneConfig, routing: str) -> ASEModel:
    """``backbone`` with ASE 16/3/1/4 adapters of ``routing``, seeded, in eval mode."""
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
    """GFLOP of one forward of ``images`` with the first ``tasks`` tasks (torch's counter)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images, *streams(tasks))
    return counter.get_total_flops() / 1e9


def session(path: Path, threads: int, brief_spin: bool = False) -> ort.InferenceSession:
    """A CPU session of ``threads`` intra-op threads, every graph optimisation on."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if brief_spin:  # the server's "brief" wait: idle threads sleep soon, sessions can take turns
        from server.runtime import SPIN_CONFIG  # here: bench/gpu_check.py runs without server deps

        for key, value in SPIN_CONFIG["brief"].items():
            options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def eager_calls(model: ASEModel, images: torch.Tensor) -> CallsByTasks:
    def make(tasks: int) -> Callable[[], object]:
        def call() -> None:
            with torch.no_grad():
                model(images, *streams(tasks))

        return call

    return make


def ort_calls(sess: ort.InferenceSession, images: torch.Tensor) -> CallsByTasks:
    def make(tasks: int) -> Callable[[], object]:
        feeds = {
            "images": images.numpy(),
            "stream_image": np.zeros(tasks, np.int64),
            "stream_task": np.arange(tasks, dtype=np.int64),
        }
        return lambda: sess.run(None, feeds)

    return make
