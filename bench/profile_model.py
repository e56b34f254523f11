"""Where ONNX Runtime spends its time: per-operator kernel time of the exported graphs, from
onnxruntime's own profiler (``SessionOptions.enable_profiling``), for one image and 5 tasks.

    .venv/bin/python -m bench.profile_model [--size demo|vits] [--tasks 5] [--runs 30]
    .venv/bin/python -m bench.profile_model --adapters   # ASE vs the bare backbone, per operator

Exports the same random model as ``bench/bench_model.py`` (``bench/models.py``, ASE 16/3/1/4)
as a lean, a ``--plain`` and an ``--int8`` graph and prints, per graph, the node count and the
operator types by total kernel time per run. With ``--adapters``: the lean dense graphs of the
same backbone with ASE and with no adapters, operator by operator (time and node count),
ordered by what the adapters add. Profiling adds overhead: use it for shares, and
``bench/bench_model.py`` for timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from bench.models import SIZES, random_model
from export.contract import GRAPH_FILES
from export.to_onnx import export_model_dir

WARM_UP = 3


def profile(path: Path, size: int, tasks: int, runs: int, threads: int) -> Counter:
    """Operator type -> kernel microseconds per run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {
        "images": np.random.default_rng(0).standard_normal((1, 3, size, size), np.float32),
        "stream_image": np.zeros(tasks, np.int64),
        "stream_task": np.arange(tasks, dtype=np.int64),
    }
    for _ in range(WARM_UP + runs):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    # the profiler cannot start late: leave out the warm-up runs' events by their start time
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    measured_from = starts[WARM_UP]
    per_type: Counter = Counter()
    for event in events:
        kernel = event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
        if kernel and event["ts"] >= measured_from:
            per_type[event["args"]["op_name"]] += event["dur"]
    return Counter({op: total / runs for op, total in per_type.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="demo")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--adapters", action="store_true", help="ASE vs no adapters, per op")
    args = parser.parse_args(argv)
    if args.adapters:
        return compare_adapters(args)
    model = random_model(SIZES[args.size], "ase")
    size = SIZES[args.size].image_size
    with tempfile.TemporaryDirectory() as workdir:
        lean = export_model_dir(model, Path(workdir) / "lean", dispatch="dense", int8=True)
        plain = export_model_dir(model, Path(workdir) / "plain", dispatch="dense", lean=False)
        graphs = {
            "plain": plain / GRAPH_FILES["dense"],
            "lean": lean / GRAPH_FILES["dense"],
            "int8": lean / GRAPH_FILES["int8"],
        }
        for name, path in graphs.items():
            nodes = len(onnx.load(str(path)).graph.node)
            times = profile(path, size, args.tasks, args.runs, args.threads)
            total = sum(times.values())
            print(f"{args.size} {name}: {nodes} nodes, kernels {total / 1e3:.2f} ms per run")
            for op, us in times.most_common(args.top):
                print(f"  {op:24s} {us / 1e3:7.3f} ms  {us / total:6.1%}")
    return 0


def compare_adapters(args: argparse.Namespace) -> int:
    size = SIZES[args.size].image_size
    profiles = {}
    with tempfile.TemporaryDirectory() as workdir:
        for routing in ("ase", "none"):
            model = random_model(SIZES[args.size], routing)
            path = export_model_dir(model, Path(workdir) / routing, dispatch="dense")
            graph = path / GRAPH_FILES["dense"]
            nodes = Counter(node.op_type for node in onnx.load(str(graph)).graph.node)
            profiles[routing] = (profile(graph, size, args.tasks, args.runs, args.threads), nodes)
    (ase, ase_nodes), (bare, bare_nodes) = profiles["ase"], profiles["none"]
    ase_ms, bare_ms = sum(ase.values()) / 1e3, sum(bare.values()) / 1e3
    print(
        f"{args.size}, {args.tasks} tasks, kernels per run: ase {ase_ms:.2f} ms "
        f"({ase_nodes.total()} nodes), none {bare_ms:.2f} ms ({bare_nodes.total()} nodes): "
        f"+{ase_ms / bare_ms - 1:.1%}"
    )
    print("| op | ase ms (nodes) | none ms (nodes) | added ms |")
    print("| --- | --- | --- | --- |")
    added = sorted(set(ase) | set(bare), key=lambda op: bare.get(op, 0) - ase.get(op, 0))
    for op in added[: args.top]:
        a, b = ase.get(op, 0) / 1e3, bare.get(op, 0) / 1e3
        print(f"| {op} | {a:.3f} ({ase_nodes[op]}) | {b:.3f} ({bare_nodes[op]}) | {a - b:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
