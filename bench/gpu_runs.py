"""The measurements of bench/gpu_check.py for one graph: where it runs, parity against the
CPU provider, node placement, timings, FLOP counts, and the reference GEMM."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.timing import timed_ms
from export.check import (
    MAX_DRAWS,
    TIE_MARGIN,
    TOLERANCES,
    StreamCase,
    compare,
    default_cases,
    eager_reference,
)
from model.model import ASEModel

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
BATCHES, TASK_COUNTS = (1, 16), (1, 5)
LABELS_EQUAL = 0.999
PROVIDER_OPTIONS = {  # strict fp32 is what the tolerances are for; TF32 is timed beside it
    "strict": {"device_id": "0", "use_tf32": "0"},
    "tf32": {"device_id": "0", "use_tf32": "1"},
}


class CheckError(RuntimeError):
    """A graph that could not run where it was asked to."""


@dataclass(frozen=True)
class Plan:
    device: str  # "cuda" or "cpu": where the target provider runs
    work: Path  # exports and profiles (never OUT_DIR: graphs are too large to come back)
    warmup: int
    repeats: int
    parity_batch: int
    gemm_size: int
    deadline: float  # time.monotonic() after which no more timings start

    @property
    def provider(self) -> str:
        return CUDA if self.device == "cuda" else CPU

    def options(self, variant: str) -> dict[str, str]:
        return PROVIDER_OPTIONS[variant] if self.device == "cuda" else {}


def open_session(path: Path, provider: str, options: dict, profile: Path | None = None):
    """A session on ``provider`` (the CPU provider behind it for what it cannot run); fails
    unless ``provider`` was taken."""
    settings = ort.SessionOptions()
    settings.log_severity_level = 2  # ONNX Runtime's warnings (nodes placed on the CPU) to the log
    if profile is not None:
        settings.enable_profiling, settings.profile_file_prefix = True, str(profile)
    providers = [(provider, options)] + ([CPU] if provider != CPU else [])  # (name, options)
    session = ort.InferenceSession(str(path), settings, providers=providers)
    if session.get_providers()[0] != provider:
        raise CheckError(f"{path.name}: asked for {provider}, got {session.get_providers()}")
    return session


def node_placement(profile_file: str) -> dict:
    """Nodes per provider, the CPU provider's op types and the copy nodes, from a profile."""
    nodes = {}
    for event in json.loads(Path(profile_file).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            nodes[event["name"]] = (event["args"]["provider"], event["args"]["op_name"])
    Path(profile_file).unlink()
    return {
        "nodes": dict(Counter(provider for provider, _ in nodes.values())),
        "cpu_ops": dict(Counter(op for provider, op in nodes.values() if provider == CPU)),
        "memcpy_nodes": sum(op.startswith("Memcpy") for _, op in nodes.values()),
    }


def parity_cases(tasks: tuple[str, ...], batch: int) -> list[StreamCase]:
    every = tuple((image, task) for image in range(batch) for task in tasks)
    return [*default_cases(tasks), StreamCase(f"batch {batch}", batch, every)]


def draw_images(model: ASEModel, cases: list[StreamCase], size: int, seed: int) -> list:
    """Fresh random images per case whose eager routing has no near-tie (export/check.py)."""
    generator, drawn = np.random.default_rng(seed), []
    for case in cases:
        for _ in range(MAX_DRAWS):
            images = generator.standard_normal((case.images, 3, size, size), np.float32)
            if eager_reference(model, images, *case.tensors())[1] >= TIE_MARGIN:
                break
        drawn.append(images)
    return drawn


def parity(cpu, target, label: dict, cases: list, drawn: list, tokens: int) -> list[dict]:
    """``target`` against the CPU provider on every case (export/check.py's ``compare``)."""
    tolerance = TOLERANCES[label["precision"]]
    tolerance = replace(tolerance, label_agreement=max(LABELS_EQUAL, tolerance.label_agreement))
    names, rows = [output.name for output in cpu.get_outputs()], []
    for case, images in zip(cases, drawn, strict=True):
        stream_image, stream_task = case.tensors()
        feeds = {"images": images, "stream_image": stream_image, "stream_task": stream_task}
        want = dict(zip(names, cpu.run(None, feeds), strict=True))
        got = dict(zip(names, target.run(None, feeds), strict=True))
        result = compare(label["graph"], case, got, want, tolerance, tokens)
        same = np.array_equal(got["expert_tokens"], want["expert_tokens"])
        rows.append(
            {
                **label,
                **asdict(result),
                "passed": result.passed,
                "router_identical": same,
                "gating": label["variant"] == "strict",
            }
        )
    return rows


def stream_layout(batch: int, tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` images x the first ``tasks`` tasks, image-major."""
    return np.repeat(np.arange(batch), tasks), np.tile(np.arange(tasks), batch)


def counted_gflop(merged: ASEModel, size: int, batch: int, tasks: int) -> float:
    """FLOPs of ``merged`` (the merged eager model: its dense bank counts all N*r rank columns,
    so sparse and dense rows share one count), from batch 1 and 2: the cost is linear in B."""
    counts = []
    for images in (1, 2):
        stream_image, stream_task = (torch.from_numpy(a) for a in stream_layout(images, tasks))
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            merged(torch.randn(images, 3, size, size), stream_image, stream_task)
        counts.append(counter.get_total_flops())
    return (counts[0] + (batch - 1) * (counts[1] - counts[0])) / 1e9


def median_ms(call, warmup: int, repeats: int) -> tuple[float, float]:
    """(median, minimum) in ms of ``repeats`` calls after ``warmup`` untimed ones."""
    times = timed_ms(call, repeats, warmup)
    return float(np.median(times)), float(np.min(times))


class BoundRun:
    """One run with inputs and outputs on ``device`` (IOBinding), synchronised at its end."""

    def __init__(self, session, feeds: dict, device: str) -> None:
        self.session, self.binding = session, session.io_binding()
        self.inputs = [ort.OrtValue.ortvalue_from_numpy(a, device, 0) for a in feeds.values()]
        for name, value in zip(feeds, self.inputs, strict=True):
            self.binding.bind_ortvalue_input(name, value)
        for output in session.get_outputs():
            self.binding.bind_output(output.name, device)

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()


def timings(session, label: dict, facts: dict, plan: Plan, layouts: list) -> list[dict]:
    """Median ms per (batch, tasks) layout: bound to the device, and with host arrays."""
    generator, rows, size = np.random.default_rng(), [], facts["size"]
    for batch, tasks in layouts:
        if time.monotonic() > plan.deadline:
            return rows + [{**label, "batch": batch, "tasks": tasks, "skipped": "deadline"}]
        stream_image, stream_task = stream_layout(batch, tasks)
        images = generator.standard_normal((batch, 3, size, size), np.float32)
        feeds = {"images": images, "stream_image": stream_image, "stream_task": stream_task}
        ms, fastest = median_ms(BoundRun(session, feeds, plan.device), plan.warmup, plan.repeats)
        host_ms, _ = median_ms(partial(session.run, None, feeds), plan.warmup, plan.repeats)
        gflop = facts["gflop"][(batch, tasks)]
        rows.append(
            {
                **label,
                "batch": batch,
                "tasks": tasks,
                "streams": batch * tasks,
                "tokens": batch * tasks * facts["tokens"],
                "ms": ms,
                "min_ms": fastest,
                "host_ms": host_ms,
                "gflop": gflop,
                "tflops": gflop / ms,
            }
        )
    return rows


def gemm_tflops(device: str, dtype: torch.dtype, n: int, repeats: int) -> float:
    """torch n x n x n GEMM on random data: median of ``repeats`` after 3 warm-ups (CUDA events
    on the GPU, TF32 off); TFLOP/s."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for index in range(3 + repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            started = time.perf_counter()
            a @ b
            ms = (time.perf_counter() - started) * 1e3
        if index >= 3:
            times.append(ms)
    del a, b
    if device == "cuda":
        torch.cuda.empty_cache()  # the sessions after it get the memory back
    return 2 * n**3 / (float(np.median(times)) / 1e3) / 1e12
