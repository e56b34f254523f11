"""Verify an exported model directory: ONNX checker, then ONNX Runtime against PyTorch eager.

The reference is the *unmerged* model rebuilt from the checkpoint, so one check covers the
merge, the dispatch rewrite and the export. Inputs are fresh random images and several stream
layouts (task subsets, orders, repeated tasks, a task nobody asked for). Pass criteria:

- fp32: every map within ``1e-4`` (absolute), label maps (argmax of ``classes`` logits)
  identical on >= 99.9% of pixels, ``expert_tokens`` equal, ``shared_gate_mass`` within 1e-4;
- fp16 (network in fp16, routers and post-processing in fp32): every map within ``2e-2``
  (mean |diff| within ``2e-3``), label maps >= 99% identical, ``expert_tokens`` summing to
  the same totals and no count off by more than 5% of the tokens or 1 token, whichever is
  larger (a near-tie between two routed logits may flip in fp16), ``shared_gate_mass``
  within ``1e-2``. Measured on tiny
  random models: max |diff| <= 6.4e-3, labels >= 99.8%, at most one token moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.metadata import read_metadata
from model.checkpoint import load_checkpoint
from model.model import ASEModel
from model.tasks import TASK_NAMES, TASKS


@dataclass(frozen=True)
class Tolerance:
    map_atol: float  # max |diff| of any map value
    map_mean_atol: float  # mean |diff| of each map
    label_agreement: float
    tokens_moved: float  # largest expert_tokens difference, as a share of the tokens
    gate_mass_atol: float


TOLERANCES = {
    "fp32": Tolerance(1e-4, 1e-4, 0.999, 0.0, 1e-4),
    "fp16": Tolerance(2e-2, 2e-3, 0.99, 0.05, 1e-2),
}


@dataclass(frozen=True)
class StreamCase:
    """One run: ``images`` images, and the (image, task) pair of every stream."""

    name: str
    images: int
    streams: tuple[tuple[int, str], ...]

    def tensors(self) -> tuple[np.ndarray, np.ndarray]:
        stream_image = np.array([image for image, _ in self.streams], np.int64)
        stream_task = np.array([TASK_NAMES.index(task) for _, task in self.streams], np.int64)
        return stream_image, stream_task


def default_cases(tasks: tuple[str, ...]) -> list[StreamCase]:
    """All tasks image-major; one task; a reversed subset across images; tasks repeated."""
    last = tasks[-1]
    return [
        StreamCase("all tasks", 2, tuple((i, t) for i in range(2) for t in tasks)),
        StreamCase("one task", 1, ((0, last),)),
        StreamCase("subset reversed", 3, tuple((i % 3, t) for i, t in enumerate(tasks[::-2]))),
        StreamCase("repeated", 2, ((1, last), (0, tasks[0]), (0, last), (1, tasks[0]))),
    ]


@dataclass
class CaseResult:
    graph: str
    case: str
    map_error: dict[str, float]  # task -> max abs difference
    map_mean_error: dict[str, float]  # task -> mean abs difference
    label_agreement: dict[str, float]  # classes task -> share of identical labels
    tokens_moved: float  # max |expert_tokens difference| / tokens per stream
    gate_mass_error: float
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class CheckReport:
    results: list[CaseResult]
    providers: list[str]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    def summary(self) -> str:
        lines = [f"providers: {', '.join(self.providers)}"]
        for r in self.results:
            worst = max(r.map_error.values(), default=0.0)
            mean = max(r.map_mean_error.values(), default=0.0)
            agree = min(r.label_agreement.values(), default=1.0)
            status = "ok" if r.passed else "FAIL " + "; ".join(r.failures)
            lines.append(
                f"{r.graph:6s} {r.case:16s} max|diff| {worst:.2e} mean {mean:.1e} "
                f"labels {agree:.4%} "
                f"tokens moved {r.tokens_moved:.2%} gate mass {r.gate_mass_error:.1e}: {status}"
            )
        return "\n".join(lines)


def check_graph_file(path: Path) -> None:
    """The ONNX checker with full shape inference (contrib ops are skipped by the checker)."""
    onnx.checker.check_model(str(path), full_check=True)


def open_session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def eager_outputs(
    model: ASEModel, images: np.ndarray, stream_image: np.ndarray, stream_task: np.ndarray
) -> dict[str, np.ndarray]:
    """The reference in contract-3 form; tasks without streams give (0, C, H, W)."""
    with torch.no_grad():
        out = model.predict(
            torch.from_numpy(images), torch.from_numpy(stream_image), torch.from_numpy(stream_task)
        )
    return {
        **{task: value.numpy() for task, value in out.maps.items()},
        "expert_tokens": out.expert_tokens.numpy(),
        "shared_gate_mass": out.shared_gate_mass.numpy(),
    }


def compare(
    graph: str,
    case: StreamCase,
    got: dict[str, np.ndarray],
    want: dict[str, np.ndarray],
    tolerance: Tolerance,
    tokens: int,
) -> CaseResult:
    result = CaseResult(graph, case.name, {}, {}, {}, 0.0, 0.0)
    for task in (name for name in got if name in TASKS):
        present = want.get(task)
        expected_rows = sum(1 for _, t in case.streams if t == task)
        if got[task].shape[0] != expected_rows:
            result.failures.append(f"{task}: {got[task].shape[0]} rows, {expected_rows} streams")
            continue
        if present is None:
            continue
        if got[task].shape != present.shape:
            result.failures.append(f"{task}: shape {got[task].shape} != {present.shape}")
            continue
        difference = np.abs(got[task] - present)
        result.map_error[task] = float(difference.max(initial=0.0))
        result.map_mean_error[task] = float(difference.mean()) if difference.size else 0.0
        if result.map_error[task] > tolerance.map_atol or not np.isfinite(got[task]).all():
            result.failures.append(f"{task}: max|diff| {result.map_error[task]:.2e}")
        if result.map_mean_error[task] > tolerance.map_mean_atol:
            result.failures.append(f"{task}: mean|diff| {result.map_mean_error[task]:.2e}")
        if TASKS[task].kind == "classes" and present.size:
            share = float((got[task].argmax(1) == present.argmax(1)).mean())
            result.label_agreement[task] = share
            if share < tolerance.label_agreement:
                result.failures.append(f"{task}: labels agree on {share:.4%}")
    _compare_router(result, got, want, tolerance, tokens)
    return result


def _compare_router(
    result: CaseResult,
    got: dict[str, np.ndarray],
    want: dict[str, np.ndarray],
    tolerance: Tolerance,
    tokens: int,
) -> None:
    for name in ("expert_tokens", "shared_gate_mass"):
        if got[name].shape != want[name].shape:
            result.failures.append(f"{name}: shape {got[name].shape} != {want[name].shape}")
            return
    moved = np.abs(got["expert_tokens"] - want["expert_tokens"]).max(initial=0.0)
    result.tokens_moved = float(moved) / tokens
    result.gate_mass_error = float(
        np.abs(got["shared_gate_mass"] - want["shared_gate_mass"]).max(initial=0.0)
    )
    totals_differ = np.abs(got["expert_tokens"].sum(-1) - want["expert_tokens"].sum(-1)).max(
        initial=0.0
    )
    if totals_differ:
        result.failures.append(f"expert_tokens totals differ by {totals_differ:g}")
    if moved > max(tolerance.tokens_moved * tokens, 1.0 if tolerance.tokens_moved else 0.0):
        result.failures.append(f"expert_tokens differ by {moved:g} tokens")
    if result.gate_mass_error > tolerance.gate_mass_atol:
        result.failures.append(f"shared_gate_mass differs by {result.gate_mass_error:.2e}")


def check_model_dir(
    model_dir: Path,
    reference: Path | ASEModel,
    cases: list[StreamCase] | None = None,
    seed: int = 0,
) -> CheckReport:
    """Check every graph of ``model_dir`` against ``reference`` (checkpoint or model)."""
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    model = load_checkpoint(reference)[0] if isinstance(reference, str | Path) else reference
    model = model.eval()
    tolerance = TOLERANCES[metadata["precision"]]
    tokens = metadata["adapters"]["tokens_per_stream"]
    size = (metadata["input"]["height"], metadata["input"]["width"])
    cases = cases or default_cases(model.config.tasks)
    generator = np.random.default_rng(seed)
    results, providers = [], []
    for graph, entry in metadata["graphs"].items():
        path = model_dir / entry["file"]
        check_graph_file(path)
        session = open_session(path)
        providers = session.get_providers()
        names = [output.name for output in session.get_outputs()]
        for case in cases:
            images = generator.standard_normal((case.images, 3, *size)).astype(np.float32)
            stream_image, stream_task = case.tensors()
            feeds = {"images": images, "stream_image": stream_image, "stream_task": stream_task}
            got = dict(zip(names, session.run(None, feeds), strict=True))
            want = eager_outputs(model, images, stream_image, stream_task)
            results.append(compare(graph, case, got, want, tolerance, tokens))
    return CheckReport(results, providers)
