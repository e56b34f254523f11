"""Requests as tritonclient 2.73 makes them, and results as it reads them, without a server:
the official client's own body builder and parser on both sides of our wire functions."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.grpc import _utils as grpc_utils
from tritonclient.grpc import service_pb2

from server.modeldir import ModelDir, load_model_dir
from server.v2.interface import FrameResult, InferRequest, check_model
from server.v2.rest import HEADER_LENGTH

REPO = Path(__file__).resolve().parents[3]


def demo_model() -> ModelDir:
    return load_model_dir(REPO / "demo" / "model", verify_hashes=False)


def png_bytes(seed: int = 0, height: int = 24, width: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_input(module, data: bytes, binary: bool = True):
    """The BYTES input ``image``; as JSON, the file travels in base64."""
    tensor = module.InferInput("image", [1], "BYTES")
    element = data if binary or module is grpcclient else base64.b64encode(data)
    tensor.set_data_from_numpy(np.array([element], dtype=object), **_binary(module, binary))
    return tensor


def pixels_input(module, frames: np.ndarray, binary: bool = True):
    tensor = module.InferInput("pixels", list(frames.shape), "UINT8")
    tensor.set_data_from_numpy(frames, **_binary(module, binary))
    return tensor


def _binary(module, binary: bool) -> dict:
    return {"binary_data": binary} if module is httpclient else {}


def http_body(inputs, outputs=None, **kwargs) -> tuple[bytes, dict[str, str]]:
    """The body and headers tritonclient.http would send."""
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, **kwargs
    )
    return body, ({} if json_size is None else {HEADER_LENGTH: str(json_size)})


def http_result(body: bytes, headers: dict[str, str]) -> httpclient.InferResult:
    """Our response as tritonclient.http reads it."""
    length = headers.get(HEADER_LENGTH)
    return httpclient.InferResult.from_response_body(
        body, header_length=None if length is None else int(length)
    )


def grpc_message(inputs, outputs=None, model="ase-demo", version="", **kwargs):
    """The ModelInferRequest tritonclient.grpc would send, through its wire bytes."""
    options = dict(
        request_id="",
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )
    options.update(kwargs)
    message = grpc_utils._get_inference_request(
        model_name=model, inputs=inputs, model_version=version, outputs=outputs, **options
    )
    return service_pb2.ModelInferRequest.FromString(message.SerializeToString())


def grpc_result(message: service_pb2.ModelInferResponse) -> grpcclient.InferResult:
    return grpcclient.InferResult(
        service_pb2.ModelInferResponse.FromString(message.SerializeToString())
    )


def fake_frames(request: InferRequest, model: ModelDir, height: int, width: int, seed: int = 0):
    """What the request path would compute: random maps of each kind, router rows per task."""
    rng = np.random.default_rng(seed)
    layers, experts = model.adapters.layers, model.adapters.experts
    frames = []
    for _ in range(request.frames):
        maps = {}
        for task in request.tasks:
            if task.kind == "classes":
                maps[task.name] = rng.integers(0, task.channels, (height, width), np.uint8)
            elif task.kind == "probability":
                maps[task.name] = rng.random((height, width), np.float32)
            else:
                vectors = rng.normal(size=(height, width, 3)).astype(np.float32)
                maps[task.name] = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
        tokens = rng.random((len(request.tasks), layers, experts), np.float32) * 64
        gate = rng.random((len(request.tasks), layers), np.float32) * 64
        frames.append(FrameResult(maps, tokens, gate))
    return frames


class OneModel:
    """The ``Models`` (server/v2/grpc_service.py) of a server with one fixed model, ready, in
    model control mode none: what the gRPC service needs, without a model run."""

    def __init__(self, model: ModelDir) -> None:
        self.model = model

    def resolve(self, name: str, version: str) -> OneModel:
        check_model(self.model, name, version)
        return self

    def is_ready(self, name: str, version: str) -> bool:
        return self.resolve(name, version) is self

    def versions(self, name: str) -> list[str]:
        return [self.model.version]

    async def index(self, ready_only: bool) -> list[dict[str, str]]:
        return [{"name": self.model.name, "version": self.model.version, "state": "READY"}]

    async def load(self, name: str) -> None:
        from server.v2.errors import unavailable

        raise unavailable("explicit model load / unload is not allowed")

    unload = load
