"""The CUDA path in one command: export, CUDA against the CPU provider, timing
(docs/benchmarks.md, "GPU").

    python -m bench.gpu_check OUT_DIR [--device auto|cuda|cpu] [--jobs 6] [--small]

On a machine with a CUDA GPU and onnxruntime-gpu (the release of ``bench/gpu_wheel.py``):

1. the GPU's fp16 GEMM rate, measured with torch (the reference of the "% of GEMM" columns),
   at the start and again at the end;
2. exports of the demo checkpoint and of random-weight ViT-S/16 and ViT-B/16 (224 px, ASE
   16/3/1/4, five tasks) with ``--dispatch auto``, in fp32 and with ``--fp16``, ``--jobs`` at
   a time (``export/to_onnx.py``);
3. for both graphs (dense, sparse) of every export, the CUDA provider against the CPU provider
   on fresh random images (export/check.py's stream layouts and a batch): maps within
   export/check.py's tolerance for the precision, labels >= 99.9% equal, router statistics
   equal (fp16: within the documented fp16 tolerance); which nodes ran on which provider (from
   ONNX Runtime's profile);
4. timings of the CUDA provider: inputs and outputs on the GPU (IOBinding), every run
   synchronised, after warm-up runs, medians; batch 1 and 16, 1 and 5 tasks; also with host
   arrays (as the server runs it) and, for fp32 graphs, with TF32 allowed;
5. ``OUT_DIR/gpu_check.json`` and ``gpu_check.md``, rewritten after every graph (a run cut
   short still leaves its results); the tables printed last.

Without CUDA (or ``--device cpu``) the same steps run on the CPU provider, with small random
sizes: the rehearsal of every line but the CUDA ones (tests/bench/test_gpu_check.py).
Exit status 1 if a parity check failed or a graph could not run where it was asked to.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort
import torch

from bench.gpu_report import markdown, tables
from bench.gpu_runs import (
    BATCHES,
    CPU,
    CUDA,
    TASK_COUNTS,
    Plan,
    counted_gflop,
    draw_images,
    gemm_tflops,
    node_placement,
    open_session,
    parity,
    parity_cases,
    timings,
)
from bench.gpu_wheel import ONNXRUNTIME_GPU_VERSION, WHEELS
from bench.models import random_model
from export.contract import read_metadata
from export.to_onnx import export_checkpoint, export_model_dir
from model.checkpoint import load_checkpoint
from model.config import BackboneConfig
from model.model import ASEModel

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "demo" / "ckpt.pt"
SIZES = {  # ViT-S/16 and ViT-B/16 at 224 px (196 tokens per stream)
    "vits": BackboneConfig(image_size=224, width=384, depth=12, heads=6),
    "vitb": BackboneConfig(image_size=224, width=768, depth=12, heads=12),
}
SMALL_SIZES = {  # the rehearsal's stand-ins: the same code, seconds to export
    "vits": BackboneConfig(image_size=32, patch_size=8, width=32, depth=2, heads=2),
    "vitb": BackboneConfig(image_size=32, patch_size=8, width=64, depth=2, heads=2),
}
PRECISIONS, GRAPHS = ("fp32", "fp16"), ("dense", "sparse")
DEVICE_PACKAGES = (
    "numpy",
    "protobuf",
    "flatbuffers",
    "packaging",
    "onnx",
    "nvidia-cuda-runtime",
    "nvidia-cublas",
    "nvidia-cudnn-cu13",
    "nvidia-cufft",
    "nvidia-curand",
    "nvidia-cuda-nvrtc",
)
"""onnxruntime-gpu's requirements (its wheel's METADATA, the cuda and cudnn extras included)."""


@dataclass(frozen=True)
class ModelSpec:
    """A model of the check: the demo checkpoint, or a random-weight backbone size."""

    name: str
    checkpoint: str | None = None
    backbone: BackboneConfig | None = None

    def build(self) -> ASEModel:
        if self.checkpoint:
            return load_checkpoint(self.checkpoint)[0].eval()
        return random_model(self.backbone, "ase")


@dataclass
class Report:
    out: Path
    data: dict = field(default_factory=dict)

    def add(self, key: str, *rows: dict) -> None:
        self.data.setdefault(key, []).extend(rows)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.data) + "\n")

    @property
    def passed(self) -> bool:
        gating = [row for row in self.data.get("parity", []) if row["gating"]]
        return bool(gating) and all(row["passed"] for row in gating) and not self.data.get("errors")


def export_job(spec: ModelSpec, precision: str, out: Path, threads: int, reuse: bool) -> dict:
    """One ``to_onnx.py --dispatch auto [--fp16]`` export (in a worker process); ``reuse``:
    keep a model directory an earlier run left in ``out``."""
    torch.set_num_threads(threads)
    started, fp16, name = time.perf_counter(), precision == "fp16", f"ase-{spec.name}"
    reused = reuse and (out / "metadata.json").is_file()
    if not reused and spec.checkpoint:
        export_checkpoint(Path(spec.checkpoint), out, dispatch="auto", fp16=fp16, name=name)
    elif not reused:
        export_model_dir(spec.build(), out, dispatch="auto", fp16=fp16, name=name)
    metadata = read_metadata(out)
    return {
        "model": spec.name,
        "precision": precision,
        "dir": str(out),
        "seconds": round(time.perf_counter() - started, 1),
        "reused": reused,
        "graphs": {mode: entry.sha256 for mode, entry in metadata.graphs.items()},
        "provider_graph": dict(metadata.provider_graph),
        "exporter": dict(metadata.exporter),
    }


def export_all(specs: list[ModelSpec], work: Path, jobs: int, reuse: bool) -> list[dict]:
    """Every (model, precision) export, ``jobs`` processes at a time, largest models first."""
    todo = [(spec, p, work / f"{spec.name}-{p}") for spec in reversed(specs) for p in PRECISIONS]
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    if jobs <= 1:
        return [export_job(*job, threads, reuse) for job in todo]
    spawn = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
        futures = [pool.submit(export_job, *job, threads, reuse) for job in todo]
        return [future.result() for future in futures]


def check_graph(path: Path, label: dict, model_facts: dict, plan: Plan, report: Report) -> None:
    """Parity, node placement and timings of one graph; then TF32 beside it (fp32 graphs)."""
    cases, drawn, tokens = model_facts["cases"], model_facts["images"], model_facts["tokens"]
    cpu = open_session(path, CPU, {})
    profile = plan.work / f"profile-{label['model']}-{label['precision']}-{label['graph']}"
    target = open_session(path, plan.provider, plan.options("strict"), profile)
    report.add("parity", *parity(cpu, target, label, cases, drawn, tokens))
    try:  # a profile that cannot be read must not cost the graph its timings
        placement = node_placement(target.end_profiling())
    except (OSError, ValueError, KeyError) as error:
        placement = {"error": f"{type(error).__name__}: {error}"}
    report.add("placement", {**label, **placement})
    layouts = [(batch, tasks) for batch in BATCHES for tasks in TASK_COUNTS]
    report.add("timing", *timings(target, label, model_facts, plan, layouts))
    del target
    if label["precision"] == "fp32":
        tf32_label = {**label, "variant": "tf32"}
        tf32 = open_session(path, plan.provider, plan.options("tf32"))
        report.add("parity", *parity(cpu, tf32, tf32_label, cases[-1:], drawn[-1:], tokens))
        report.add("timing", *timings(tf32, tf32_label, model_facts, plan, layouts[-1:]))


def check_model(spec: ModelSpec, exports: list[dict], plan: Plan, report: Report) -> None:
    """Every graph of the model's exports, on images and FLOP counts drawn once per model."""
    model, metadata = spec.build(), read_metadata(Path(exports[0]["dir"]))
    size, seed = metadata.input.height, int.from_bytes(os.urandom(4), "little")
    cases, merged = parity_cases(model.config.tasks, plan.parity_batch), model.merge()
    layouts = [(batch, tasks) for batch in BATCHES for tasks in TASK_COUNTS]
    facts = {
        "cases": cases,
        "images": draw_images(model, cases, size, seed),
        "tokens": metadata.adapters.tokens_per_stream,
        "size": size,
        "gflop": {layout: counted_gflop(merged, size, *layout) for layout in layouts},
    }
    report.add("images", {"model": spec.name, "seed": seed, "cases": [c.name for c in cases]})
    for export in sorted(exports, key=lambda e: PRECISIONS.index(e["precision"])):
        files = read_metadata(Path(export["dir"])).graphs  # the graphs as its metadata names them
        for graph in GRAPHS:
            label = {
                "model": spec.name,
                "precision": export["precision"],
                "graph": graph,
                "variant": "strict",
            }
            try:
                path = Path(export["dir"]) / files[graph].file
                check_graph(path, label, facts, plan, report)
            except Exception as error:  # a graph that cannot run is a finding: go on with the rest
                report.add("errors", {**label, "error": f"{type(error).__name__}: {error}"})
            print(f"{spec.name} {export['precision']} {graph}: done", flush=True)
            report.save()


def choose_device(requested: str) -> str:
    usable = torch.cuda.is_available() and CUDA in ort.get_available_providers()
    if requested == "cuda" and not usable:
        providers = ort.get_available_providers()
        raise SystemExit(
            f"--device cuda: torch sees CUDA {torch.cuda.is_available()}; "
            f"onnxruntime {ort.__version__}: {providers}"
        )
    return "cuda" if requested == "cuda" or (requested == "auto" and usable) else "cpu"


def environment(device: str, small: bool) -> dict:
    """What ran: versions, the GPU and its clocks (nvidia-smi), the packages onnxruntime uses,
    the carried wheels' packages and where pydantic came from (on the GPU machine: the
    carried wheels' install, bench/gpu_device.sh)."""
    from importlib import metadata

    import pydantic

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    info = {
        "device": device,
        "small": small,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "onnxruntime": ort.__version__,
        "onnxruntime_file": ort.__file__,
        "onnxruntime_expected": ONNXRUNTIME_GPU_VERSION if device == "cuda" else None,
        "providers": ort.get_available_providers(),
        "packages": {name: version(name) for name in DEVICE_PACKAGES},
        "carried": {wheel.project: version(wheel.project) for wheel in WHEELS},
        "pydantic_file": pydantic.__file__,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw"
        try:
            smi = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as error:
            info["nvidia_smi"] = str(error)
    return info


def reference_gemm(plan: Plan) -> dict:
    """torch GEMM rates: fp16 on the GPU (the reference), fp32 beside it; fp32 on a CPU."""
    dtypes = (torch.float16, torch.float32) if plan.device == "cuda" else (torch.float32,)
    rates = {
        str(dtype).split(".")[-1]: gemm_tflops(plan.device, dtype, plan.gemm_size, 10)
        for dtype in dtypes
    }
    return {"device": plan.device, "n": plan.gemm_size, "tflops": rates}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--small", action="store_true", help="small sizes (the default on a CPU)")
    parser.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT), help="the demo checkpoint")
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--jobs", type=int, default=1, help="export processes at a time")
    parser.add_argument("--repeats", type=int, help="timed runs per row (30 on CUDA, 3 small)")
    parser.add_argument("--work", type=Path, help="folder for the exports (default: a temp dir)")
    parser.add_argument(
        "--reuse-exports",
        action="store_true",
        help="keep model directories an earlier run left in --work",
    )
    parser.add_argument("--budget-s", type=float, default=480, help="no timing starts after it")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, work: Path) -> int:
    started, device = time.monotonic(), choose_device(args.device)
    small = args.small or device == "cpu"
    plan = Plan(
        device,
        work,
        warmup=2 if small else 10,
        repeats=args.repeats or (3 if small else 30),
        parity_batch=3 if small else 4,
        gemm_size=1024 if small else 8192,
        deadline=started + args.budget_s,
    )
    if device == "cuda" and hasattr(ort, "preload_dlls"):
        try:  # the CUDA and cuDNN libraries torch loaded (it is imported first) serve ORT too
            ort.preload_dlls()
        except (OSError, RuntimeError) as error:
            print(f"onnxruntime.preload_dlls: {error}", flush=True)
    report = Report(args.out, {"environment": environment(device, small)})
    report.data["reference_gemm"] = reference_gemm(plan)
    sizes = SMALL_SIZES if small else SIZES
    specs = [ModelSpec("demo", checkpoint=args.checkpoint)]
    specs += [ModelSpec(name, backbone=sizes[name]) for name in args.sizes]
    report.data["exports"] = export_all(specs, work, args.jobs, args.reuse_exports)
    report.save()
    for spec in specs:
        check_model(
            spec, [e for e in report.data["exports"] if e["model"] == spec.name], plan, report
        )
    report.data["reference_gemm"]["tflops_end"] = reference_gemm(plan)["tflops"]
    report.data["seconds"] = round(time.monotonic() - started, 1)
    report.data["passed"] = report.passed
    report.save()
    print(tables(report.data))
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        return run(args, args.work)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        return run(args, Path(work))


if __name__ == "__main__":
    sys.exit(main())
