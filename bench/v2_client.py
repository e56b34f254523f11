"""One fixed sequence of Open Inference Protocol calls with tritonclient 2.73, against any server
that speaks it, so that two servers' answers can be compared (docs/api_v2.md):

    .venv/bin/python -m bench.v2_client --server ours=127.0.0.1:8000,127.0.0.1:8001 \\
        --server triton=127.0.0.1:8100,127.0.0.1:8101 [--image demo/samples/scene_0.png]

Each server is ``name=HTTP_HOST:PORT,GRPC_HOST:PORT``. The sequence: server and model metadata
(REST and gRPC), liveness and readiness, then inference: the image file as BYTES with every
output (binary), with every output listed as JSON (the file in base64), each task alone, a
subset with the router statistics, ``size=model`` and ``max_side``; two raw UINT8 frames (binary
and JSON); gRPC with BYTES and UINT8; one asyncio REST call. With two servers or more it prints
every difference from the first one and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient

REPO = Path(__file__).resolve().parent.parent
ROUTER = ("expert_tokens", "shared_gate_mass")
SUBSET = ("semseg", "normals", *ROUTER)
MAX_MESSAGE = 512 * 2**20


@dataclass
class Step:
    """One call's comparable result: outputs by name as (datatype, array), or a document."""

    outputs: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    document: dict | None = None


@dataclass(frozen=True)
class Call:
    """One inference call of the sequence."""

    name: str
    transport: str  # "http", "grpc" or "aio" (tritonclient.http.aio)
    input: str  # "image" (the file, BYTES) or "pixels" (the frames, UINT8)
    outputs: tuple[str, ...] | None = None  # None: none listed, so every output
    binary: bool = True  # REST: tensors binary both ways; False: JSON (the file in base64)
    parameters: dict | None = None
    crop: tuple[int, int] | None = None  # pixels: the frames' top-left (h, w) only


def calls(tasks: list[str]) -> list[Call]:
    return [
        Call("image/binary/all", "http", "image"),
        Call("image/json/all", "http", "image", (*tasks, *ROUTER), binary=False),
        *(Call(f"image/binary/{task}", "http", "image", (task,)) for task in tasks),
        Call("image/binary/subset", "http", "image", SUBSET),
        Call("image/size=model", "http", "image", SUBSET, parameters={"size": "model"}),
        Call("image/max_side=64", "http", "image", SUBSET, parameters={"max_side": 64}),
        Call("pixels/binary/subset", "http", "pixels", SUBSET),
        Call("pixels/json/edges", "http", "pixels", ("edges", *ROUTER), False, crop=(24, 32)),
        Call("grpc/image/all", "grpc", "image"),
        Call("grpc/pixels/subset", "grpc", "pixels", SUBSET),
        Call("aio/image/subset", "aio", "image", SUBSET),
    ]


def run_sequence(http_url: str, grpc_url: str, model: str, image: bytes, frames: np.ndarray):
    """Every step of the sequence, by name. ``frames``: uint8 (N, H, W, 3)."""
    http = httpclient.InferenceServerClient(http_url, network_timeout=120, connection_timeout=30)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    grpc = grpcclient.InferenceServerClient(grpc_url, channel_args=options)
    clients = {"http": http, "grpc": grpc}
    try:
        steps = _metadata_steps(http, grpc, model)
        for call in calls(_task_names(steps["model_metadata/http"].document)):
            if call.transport == "aio":
                steps[call.name] = asyncio.run(_aio_infer(http_url, model, call, image, frames))
            else:
                steps[call.name] = infer(clients[call.transport], model, call, image, frames)
    finally:
        http.close()
        grpc.close()
    return steps


def infer(client, model: str, call: Call, image: bytes, frames: np.ndarray) -> Step:
    module = grpcclient if call.transport == "grpc" else httpclient
    inputs, outputs = build_request(module, call, image, frames)
    return _step(client.infer(model, inputs, outputs=outputs, parameters=call.parameters))


async def _aio_infer(url: str, model: str, call: Call, image: bytes, frames) -> Step:
    client = aioclient.InferenceServerClient(url)
    try:
        inputs, outputs = build_request(aioclient, call, image, frames)
        result = await client.infer(model, inputs, outputs=outputs, parameters=call.parameters)
        return _step(result)
    finally:
        await client.close()


def build_request(module, call: Call, image: bytes, frames: np.ndarray):
    """The inputs and requested outputs of ``call``, as tritonclient builds them."""
    binary = {} if module is grpcclient else {"binary_data": call.binary}
    if call.input == "image":
        tensor = module.InferInput("image", [1], "BYTES")
        element = image if call.binary else base64.b64encode(image)  # JSON: the file in base64
        tensor.set_data_from_numpy(np.array([element], dtype=object), **binary)
    else:
        pixels = call_frames(call, frames)
        tensor = module.InferInput("pixels", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels, **binary)
    outputs = None
    if call.outputs is not None:
        outputs = [module.InferRequestedOutput(name, **binary) for name in call.outputs]
    return [tensor], outputs


def call_frames(call: Call, frames: np.ndarray) -> np.ndarray:
    """The frames a pixels call sends."""
    if call.crop is None:
        return frames
    return np.ascontiguousarray(frames[:, : call.crop[0], : call.crop[1]])


def _metadata_steps(http, grpc, model: str) -> dict[str, Step]:
    grpc_model = grpc.get_model_metadata(model, as_json=True)
    health = {
        "http": [http.is_server_live(), http.is_server_ready(), http.is_model_ready(model)],
        "grpc": [grpc.is_server_live(), grpc.is_server_ready(), grpc.is_model_ready(model)],
    }
    return {
        "server_metadata/http": Step(document=http.get_server_metadata()),
        "server_metadata/grpc": Step(document=grpc.get_server_metadata(as_json=True)),
        "model_metadata/http": Step(document=http.get_model_metadata(model)),
        "model_metadata/grpc": Step(document=_int_shapes(grpc_model)),
        "health": Step(document=health),
    }


def _int_shapes(document: dict) -> dict:
    """gRPC's JSON form writes int64 shapes as strings."""
    for key in ("inputs", "outputs"):
        for tensor in document.get(key, []):
            tensor["shape"] = [int(d) for d in tensor["shape"]]
    return document


def _task_names(document: dict) -> list[str]:
    return [t["name"] for t in document["outputs"] if t["name"] not in ROUTER]


def _step(result) -> Step:
    response = result.get_response()
    outputs = response.outputs if hasattr(response, "outputs") else response["outputs"]
    names = [o.name if hasattr(o, "name") else o["name"] for o in outputs]
    datatypes = [o.datatype if hasattr(o, "datatype") else o["datatype"] for o in outputs]
    return Step({n: (d, result.as_numpy(n)) for n, d in zip(names, datatypes, strict=True)})


def compare(ours: dict[str, Step], theirs: dict[str, Step], atol: float = 1e-5) -> list[str]:
    """Differences between two servers' sequences: steps, output names, datatypes, shapes,
    UINT8 values exactly, floats within ``atol``. Documents are compared by their keys (name
    and version legitimately differ between servers)."""
    problems = [f"step {s} missing" for s in ours.keys() ^ theirs.keys()]
    for name in sorted(ours.keys() & theirs.keys()):
        a, b = ours[name], theirs[name]
        if a.document is not None:
            problems += [f"{name}: {d}" for d in _document_differences(a.document, b.document)]
        if list(a.outputs) != list(b.outputs):
            problems.append(f"{name}: outputs {list(a.outputs)} vs {list(b.outputs)}")
        for output in a.outputs.keys() & b.outputs.keys():
            found = _tensor_differences(a.outputs[output], b.outputs[output], atol)
            problems += [f"{name}/{output}: {d}" for d in found]
    return problems


def _document_differences(a: dict, b: dict | None) -> list[str]:
    """Same keys ("tasks" is our own extension), inputs, outputs and health; both servers
    advertise binary_tensor_data. Names and versions may differ."""
    if b is None or set(a) - {"tasks"} != set(b) - {"tasks"}:
        return [f"keys {sorted(a)} vs {sorted(b or {})}"]
    problems = [
        f"{key} differ" for key in ("inputs", "outputs", "http", "grpc") if a.get(key) != b.get(key)
    ]
    if "extensions" in a and not all("binary_tensor_data" in d["extensions"] for d in (a, b)):
        problems.append("binary_tensor_data is not in both servers' extensions")
    return problems


def _tensor_differences(a, b, atol: float) -> list[str]:
    (type_a, array_a), (type_b, array_b) = a, b
    if type_a != type_b or array_a.shape != array_b.shape:
        return [f"{type_a} {list(array_a.shape)} vs {type_b} {list(array_b.shape)}"]
    if array_a.dtype == np.uint8:
        agreement = float(np.mean(array_a == array_b))
        return [] if agreement == 1.0 else [f"values agree at {agreement:.4%}"]
    worst = float(np.max(np.abs(array_a.astype(np.float64) - array_b), initial=0.0))
    return [] if worst <= atol else [f"max |difference| {worst:.3g} > {atol}"]


def sample_frames(image_path: Path) -> np.ndarray:
    """Two frames of one size: the sample image and its mirror image."""
    from PIL import Image

    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    return np.stack([rgb, rgb[:, ::-1]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="append", required=True, help="name=HTTP,GRPC")
    parser.add_argument("--model", default="ase-demo")
    parser.add_argument("--image", type=Path, default=REPO / "demo" / "samples" / "scene_0.png")
    parser.add_argument("--atol", type=float, default=1e-5)
    args = parser.parse_args()
    image, frames = args.image.read_bytes(), sample_frames(args.image)
    results = {}
    for spec in args.server:
        name, _, urls = spec.partition("=")
        http_url, grpc_url = urls.split(",")
        results[name] = run_sequence(http_url, grpc_url, args.model, image, frames)
        print(f"{name}: {len(results[name])} steps")
    first, *others = results
    problems = [
        f"{other}: {p}"
        for other in others
        for p in compare(results[first], results[other], args.atol)
    ]
    print("\n".join(problems) or "no differences")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
