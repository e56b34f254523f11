"""A real Triton serving our model directory behind the same V2 interface as our server, for the
protocol cross-check and the benchmark (docs/api_v2.md). Runs in its own venv:

    make triton-venv
    .venv-triton/bin/python -m bench.triton_reference --model-dir demo/model \\
        --http-port 8100 --grpc-port 8101

nvidia-pytriton 0.7.0 bundles tritonserver 2.51 with its Python backend; the bound function
below is that backend's model: it decodes the ``image`` file (or takes ``pixels``), preprocesses,
runs ONNX Runtime on the exported graph and restores the maps' size with the server's own
stages (``server.pipeline``: open, plan, decode at the planned JPEG scale, preprocess;
``server.maps``: restore; imported from this checkout: they need no torch and run on pytriton's
numpy<2), and returns the outputs ``server.v2.interface`` declares, with
the same names, datatypes and shapes. Only the task outputs requested are computed, as in our
server. Prints a line starting ``ready`` when Triton serves the model; SIGTERM or SIGINT stops
it (and Triton). Triton writes its own log to the same stdout and stderr: a caller reads them to
the end or sends them to a file (a closed pipe stalls Triton's shutdown).

Where Triton and our server legitimately differ: the model version is Triton's integer "1";
``platform`` is "python"; the response carries no output parameters (``expert_tokens``' task
list); an error raised here is Triton's 500, where our server answers 400; a JSON ``image`` is
recognised by failing to open as a file, then read as base64 (Triton cannot tell JSON from
binary inputs apart).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import signal
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np

from server.errors import InvalidInput
from server.maps import restore_size
from server.modeldir import ModelDir, TaskInfo, load_model_dir
from server.pipeline import MapRequest, MapSize, Pipeline, preprocess
from server.runtime import ModelRuntime
from server.v2.interface import (
    IMAGE,
    KIND_DTYPES,
    PIXELS,
    input_specs,
    output_specs,
)

REPO = Path(__file__).resolve().parent.parent
MAX_PIXELS = 40_000_000  # the server's default pixel limit (server/settings.py)
DTYPES = {"BYTES": np.bytes_, "UINT8": np.uint8, "FP32": np.float32}


class Reference:
    """The Python backend's model: one request at a time (Triton's dynamic batching would
    give the inputs a batch dimension of their own, and so a different interface)."""

    def __init__(self, model: ModelDir, threads: int) -> None:
        self.model = model
        self.runtime = ModelRuntime(model, ["CPUExecutionProvider"], threads)
        # Stages 1, 2, 4 and 5 of the server's own pipeline (open, plan, decode at the planned
        # JPEG scale, preprocess); no batcher or budget: Triton runs one request at a time.
        self.pipeline = Pipeline(model, batcher=None, budget=None, max_pixels=MAX_PIXELS)

    def __call__(self, requests):
        return [self.infer(request) for request in requests]

    def infer(self, request) -> dict[str, np.ndarray]:
        parameters = request.parameters or {}
        wanted = request.requested_output_names or [s.name for s in output_specs(self.model)]
        tasks = [t for t in self.model.tasks if t.name in wanted] or list(self.model.tasks)
        size = MapSize(model=parameters.get("size") == "model", max_side=parameters.get("max_side"))
        images, map_size = self.prepare(request.data, MapRequest(tuple(tasks), size))
        outputs = self.run(images, tasks, map_size)
        return {name: value for name, value in outputs.items() if name in wanted}

    def prepare(self, data: dict[str, np.ndarray], request: MapRequest):
        """The model's inputs (N, 3, H, W) and the maps' (width, height), as the server plans."""
        if (IMAGE in data) == (PIXELS in data):
            raise ValueError(f"send exactly one input, {IMAGE!r} or {PIXELS!r}")
        if PIXELS in data:
            frames = data[PIXELS]
            plan = self.pipeline.plan_frames(frames, request)
            images = np.stack([preprocess(frame, self.model) for frame in frames])
        else:
            plan = self.pipeline.plan(self.open(data[IMAGE][0]), request)
            images = self.pipeline.decode(plan)[1][None]
        return images, (plan.map_width, plan.map_height)

    def open(self, element: bytes):
        """The BYTES element: the file itself (binary data), else the file in base64 (JSON)."""
        try:
            return self.pipeline.open(element)
        except InvalidInput:
            try:
                return self.pipeline.open(base64.b64decode(element, validate=True))
            except (binascii.Error, ValueError):
                raise ValueError(
                    "input 'image' is neither an image file nor one in base64"
                ) from None

    def run(self, images: np.ndarray, tasks: list[TaskInfo], size) -> dict:
        """Model inputs (N, 3, H, W) -> every output for ``tasks``, stacked over the images."""
        count, ids = images.shape[0], np.array([t.id for t in tasks], np.int64)
        stream_image = np.repeat(np.arange(count, dtype=np.int64), len(tasks))  # image-major
        stream_task = np.tile(ids, count)
        raw = self.runtime.run(images, stream_image, stream_task)
        outputs = {}
        for task in tasks:
            maps = [restore_size(task.kind, row, *size) for row in raw[task.name]]  # per image
            outputs[task.name] = np.stack(maps).astype(KIND_DTYPES[task.kind], copy=False)
        layers, experts = raw["expert_tokens"].shape[1:]
        outputs["expert_tokens"] = raw["expert_tokens"].reshape(count, len(tasks), layers, experts)
        outputs["shared_gate_mass"] = raw["shared_gate_mass"].reshape(count, len(tasks), layers)
        return outputs


def tensors(specs):
    from pytriton.model_config import Tensor

    return [
        Tensor(
            name=s.name, dtype=DTYPES[s.datatype], shape=s.shape, optional=s.name in (IMAGE, PIXELS)
        )
        for s in specs
    ]


def serve(args: argparse.Namespace) -> None:
    from pytriton.model_config import ModelConfig
    from pytriton.triton import Triton, TritonConfig

    # The Python backend's stub links the system's libpython; this interpreter's own must win,
    # or a different patch release's stdlib meets its C core (seen: pyenv 3.11.7 over 3.11.2).
    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = ":".join(
        p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p
    )
    model = load_model_dir(args.model_dir)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        allow_metrics=False,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=model.name,
            infer_func=[Reference(model, args.threads) for _ in range(args.instances)],
            inputs=tensors(input_specs()),
            outputs=tensors(output_specs(model)),
            config=ModelConfig(batching=False),
            strict=True,
        )
        triton.run()
        print(f"ready http=127.0.0.1:{args.http_port} grpc=127.0.0.1:{args.grpc_port}", flush=True)
        stop.wait()


class _Request:
    """What pytriton hands the bound function, for ``--time-alone``: every task output."""

    def __init__(self, image: bytes, model: ModelDir) -> None:
        self.data = {IMAGE: np.array([image], dtype=np.bytes_)}
        self.parameters = {}
        self.requested_output_names = [t.name for t in model.tasks]


def time_alone(args: argparse.Namespace) -> None:
    """The bound function's own time per request, in this process, no Triton around it: what
    the backend costs; Triton's round trip less this is its transport (docs/benchmarks.md)."""
    model = load_model_dir(args.model_dir)
    reference = Reference(model, args.threads)
    request = _Request(args.time_alone.read_bytes(), model)
    for _ in range(3):
        reference.infer(request)
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        reference.infer(request)
        times.append((time.perf_counter() - started) * 1000)
    p50, p99 = np.percentile(times, [50, 99])
    print(
        f"{args.time_alone.name}: bound function alone p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"({args.repeats} calls, threads={args.threads})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "demo" / "model")
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--instances", type=int, default=1, help="model instances (in parallel)")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all)")
    parser.add_argument(
        "--time-alone",
        type=Path,
        help="an image: time the bound function alone on it (no Triton) and exit",
    )
    parser.add_argument("--repeats", type=int, default=30, help="with --time-alone")
    args = parser.parse_args()
    if args.time_alone is not None:
        return time_alone(args)
    if args.http_port is None or args.grpc_port is None:
        parser.error("--http-port and --grpc-port are needed to serve")
    serve(args)


if __name__ == "__main__":
    main()
