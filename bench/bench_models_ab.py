"""Committed model directories against each other: the model alone, five tasks, batch 1, each
directory's CPU graph (its ``provider_graph``) in ONNX Runtime with the server's brief spin,
taking turns run by run so that every model sees the same machine (``bench/timing.py``).

    .venv/bin/python -m bench.bench_models_ab demo/model demo/photo/model --repeats 60

Prints, per model, the median wall and CPU milliseconds per run and their ratios to the first
directory's (medians of the per-round ratios too). Inputs are random normalised images of each
model's own input size (speed does not depend on the pixels).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.models import session
from bench.timing import alternate_clocks
from export.contract import read_metadata


def model_call(directory: Path, threads: int, tasks: int = 5):
    """One run of ``directory``'s CPU graph on one image with its first ``tasks`` tasks."""
    metadata = read_metadata(directory)
    mode = metadata.provider_graph["CPUExecutionProvider"]
    sess = session(directory / metadata.graphs[mode].file, threads, brief_spin=True)
    size = (metadata.input.height, metadata.input.width)
    count = min(tasks, len(metadata.tasks))
    feeds = {
        "images": np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32),
        "stream_image": np.zeros(count, np.int64),
        "stream_task": np.array([t.id for t in metadata.tasks[:count]], np.int64),
    }
    return lambda: sess.run(None, feeds), f"{metadata.name} {size[0]} px ({mode})"


def compare(directories: list[Path], threads: int, repeats: int) -> list[dict]:
    calls, labels = {}, {}
    for directory in directories:
        calls[str(directory)], labels[str(directory)] = model_call(directory, threads)
    times = alternate_clocks(calls, repeats)
    first = times[str(directories[0])]
    return [
        {
            "model_dir": name,
            "model": labels[name],
            "wall_ms": float(np.median(clocks["wall"])),
            "cpu_ms": float(np.median(clocks["cpu"])),
            "wall_ratio": float(np.median(clocks["wall"]) / np.median(first["wall"])),
            "cpu_ratio": float(np.median(clocks["cpu"]) / np.median(first["cpu"])),
            "round_wall_ratio": float(np.median(clocks["wall"] / first["wall"])),
        }
        for name, clocks in times.items()
    ]


def markdown(rows: list[dict], repeats: int) -> str:
    lines = [
        f"Five tasks, batch 1, medians of {repeats} alternating rounds:",
        "",
        "| model dir | model | wall ms | CPU ms | wall x first | CPU x first | per-round wall x |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model_dir']} | {r['model']} | {r['wall_ms']:.2f} | {r['cpu_ms']:.2f} | "
            f"{r['wall_ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['round_wall_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", type=Path, nargs="+", help="the first is the reference")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = compare(args.model_dirs, args.threads, args.repeats)
    print(markdown(rows, args.repeats))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
