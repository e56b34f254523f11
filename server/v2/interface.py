"""This server's model as the Open Inference Protocol sees it (docs/api_v2.md): the inputs and
outputs it declares, a protocol request checked against them, and the response built from what
the request path computed. NumPy only: no HTTP, no model run.

Inputs, exactly one per request: ``image`` BYTES [1] (one encoded file, as ``/predict`` takes
it) or ``pixels`` UINT8 [N, H, W, 3] (N RGB frames of one size). Outputs: one per task, named
after it, stacked over the N frames (class ids UINT8 [N, h, w], probabilities FP32 [N, h, w],
unit normals FP32 [N, h, w, 3]), and the routers' ``expert_tokens`` FP32 [N, T, L, E] and
``shared_gate_mass`` FP32 [N, T, L], T over the computed tasks in registry order (the output's
parameter ``tasks`` names them). The task outputs requested choose the tasks computed; none
requested: all of them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from export.contract import ROUTER_OUTPUTS
from server.modeldir import ModelDir, TaskInfo
from server.v2.errors import bad_request, not_found
from server.v2.tensors import (
    WireRequest,
    WireResponse,
    WireTensor,
    bool_parameter,
    int_parameter,
)

IMAGE, PIXELS = "image", "pixels"
SERVER_NAME = "ase-serve"
PLATFORM = "onnx_onnxv1"  # the protocol's platform name for ONNX models
EXTENSIONS = ("binary_tensor_data", "model_repository")
KIND_OUTPUTS = {  # task kind -> (datatype, dimensions after N)
    "classes": ("UINT8", [-1, -1]),
    "probability": ("FP32", [-1, -1]),
    "vector": ("FP32", [-1, -1, 3]),
}
KIND_DTYPES = {"classes": np.uint8, "probability": np.float32, "vector": np.float32}
SIZES = ("upload", "model")
# Request parameters: this server's own, then those tritonclient may send on its own
# (binary_data_output is read by the REST layer; priority is accepted and has no effect).
# tritonclient sends the sequence parameters only with a non-zero sequence_id: a 400 here.
REQUEST_PARAMETERS = ("size", "max_side", "binary_data_output", "timeout", "priority")
SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")  # never sent here
MAX_SIDE = 65535  # as /predict's max_side
UINT64_MAX = 2**64 - 1  # timeout and priority are uint64 in Triton


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size

    def describe(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class OutputChoice:
    name: str
    binary: bool  # REST: raw bytes after the JSON header (gRPC: always raw)


@dataclass(frozen=True)
class InferRequest:
    """A request this model can serve: what to decode, which task streams, what to send back."""

    id: str | None
    image: bytes | None  # one encoded image file, as /predict takes it
    pixels: np.ndarray | None  # (N, H, W, 3) uint8
    tasks: tuple[TaskInfo, ...]  # the streams to compute, in registry (id) order
    outputs: tuple[OutputChoice, ...]  # what the response carries, in this order
    size: Literal["upload", "model"] = "upload"
    max_side: int | None = None
    timeout_s: float | None = None  # the client's own deadline (tritonclient's "timeout", us)

    @property
    def frames(self) -> int:
        return 1 if self.pixels is None else self.pixels.shape[0]


@dataclass(frozen=True)
class FrameResult:
    """What the request path computed for one image or frame."""

    maps: Mapping[str, np.ndarray]  # task -> (h, w) uint8 ids | (h, w) float32 | (h, w, 3) float32
    expert_tokens: np.ndarray  # (T, L, E): one row per task of the request, in its order
    shared_gate_mass: np.ndarray  # (T, L)

    @classmethod
    def per_task(
        cls,
        tasks: Sequence[TaskInfo],
        maps: Mapping[str, np.ndarray],
        expert_tokens: Mapping[str, np.ndarray],  # task -> (L, E), as the batcher's JobResult
        shared_gate_mass: Mapping[str, np.ndarray],  # task -> (L,)
    ) -> FrameResult:
        """From per-task router statistics, rows in the order of ``tasks``."""
        names = [t.name for t in tasks]
        return cls(
            maps,
            np.stack([expert_tokens[name] for name in names]),
            np.stack([shared_gate_mass[name] for name in names]),
        )


def input_specs() -> tuple[TensorSpec, ...]:
    return TensorSpec(IMAGE, "BYTES", (1,)), TensorSpec(PIXELS, "UINT8", (-1, -1, -1, 3))


def output_specs(model: ModelDir) -> tuple[TensorSpec, ...]:
    """Task outputs in registry order, then the router statistics (docs/api_v2.md)."""
    layers, experts = model.adapters.layers, model.adapters.experts
    tasks = tuple(
        TensorSpec(t.name, KIND_OUTPUTS[t.kind][0], (-1, *KIND_OUTPUTS[t.kind][1]))
        for t in sorted(model.tasks, key=lambda t: t.id)
    )
    expert_tokens, shared_gate_mass = ROUTER_OUTPUTS
    return (
        *tasks,
        TensorSpec(expert_tokens, "FP32", (-1, -1, layers, experts)),
        TensorSpec(shared_gate_mass, "FP32", (-1, -1, layers)),
    )


def server_metadata(version: str) -> dict:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(model: ModelDir, versions: Sequence[str] | None = None) -> dict:
    """The protocol's model metadata (``versions``: every version served, default the model's
    own), plus ``tasks`` (this server's own key: what each task output means: kind, channels,
    class names and palette, as GET /models says), which clients that do not know it ignore."""
    return {
        "name": model.name,
        "versions": list(versions or [model.version]),
        "platform": PLATFORM,
        "inputs": [spec.describe() for spec in input_specs()],
        "outputs": [spec.describe() for spec in output_specs(model)],
        "tasks": [t.model_dump(mode="json") for t in model.tasks],
    }


def check_model(model: ModelDir, name: str, version: str = "") -> None:
    """404 unless ``name`` (and ``version``, when given) are the served model's."""
    if name != model.name:
        raise not_found(f"unknown model {name!r}; this server serves {model.name!r}")
    if version and version != model.version:
        raise not_found(
            f"model {name!r} has no version {version!r}; it serves version {model.version!r}"
        )


def infer_request(wire: WireRequest, model: ModelDir) -> InferRequest:
    """A protocol request checked against this model's interface; 400 (404) for what fails."""
    check_model(model, wire.model_name, wire.model_version)
    image, pixels = _the_input(wire.inputs)
    parameters = wire.parameters
    size, max_side, timeout_s = _request_options(parameters)
    binary_default = bool_parameter(parameters, "binary_data_output", False, "request")
    outputs = _outputs(wire, model, binary_default)
    task_outputs = {choice.name for choice in outputs if choice.name in model.task_names}
    if not task_outputs:  # no task asked for by name: all of them
        task_outputs = set(model.task_names)
    tasks = tuple(sorted((model.task(name) for name in task_outputs), key=lambda t: t.id))
    return InferRequest(wire.id, image, pixels, tasks, outputs, size, max_side, timeout_s)


def check_input(name: str, datatype: str, shape: tuple[int, ...]) -> None:
    """One input's name, datatype and shape against this model's inputs; 400 if they do not
    fit. The wire readers call it before the input's data is read, so that a request declaring
    millions of elements is refused before any of them is materialised."""
    if name not in (IMAGE, PIXELS):
        raise bad_request(f"unexpected input(s) {[name]}; this model takes '{IMAGE}' or '{PIXELS}'")
    if name == IMAGE and (datatype != "BYTES" or shape != (1,)):
        raise bad_request(
            f"input '{IMAGE}' must be BYTES of shape [1], got {datatype} {list(shape)}"
        )
    if name == PIXELS and (
        datatype != "UINT8" or len(shape) != 4 or shape[3] != 3 or min(shape) < 1
    ):
        raise bad_request(
            f"input '{PIXELS}' must be UINT8 [N, H, W, 3] RGB frames with N, H, "
            f"W >= 1, got {datatype} {list(shape)}"
        )


def _the_input(inputs: Sequence[WireTensor]) -> tuple[bytes | None, np.ndarray | None]:
    names = [tensor.name for tensor in inputs]
    unknown = sorted(set(names) - {IMAGE, PIXELS})
    if unknown:
        raise bad_request(
            f"unexpected input(s) {unknown}; this model takes '{IMAGE}' or '{PIXELS}'"
        )
    if len(inputs) != 1:
        raise bad_request(
            f"send exactly one input, '{IMAGE}' (BYTES [1], an encoded image file) or "
            f"'{PIXELS}' (UINT8 [N, H, W, 3]); got {names or 'none'}"
        )
    tensor = inputs[0]
    check_input(tensor.name, tensor.datatype, tensor.shape)
    if tensor.name == IMAGE:
        return _file_bytes(tensor.data[0]), None
    return None, tensor.data


def _file_bytes(element: bytes | str) -> bytes:
    """Binary data carries the file itself; a JSON string cannot, so it carries it in base64."""
    if isinstance(element, bytes):
        return element
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(
            f"input '{IMAGE}' as JSON must be the file in base64 (or send it as binary data)"
        ) from None


def _request_options(parameters: dict) -> tuple[str, int | None, float | None]:
    if any(key in parameters for key in SEQUENCE_PARAMETERS):
        raise bad_request(
            "this model is not a sequence model: sequence_id, sequence_start and "
            "sequence_end are not supported"
        )
    unknown = sorted(set(parameters) - set(REQUEST_PARAMETERS))
    if unknown:
        raise bad_request(
            f"unknown request parameter(s) {unknown}; this model takes "
            f"{', '.join(REQUEST_PARAMETERS[:2])}"
        )
    size = parameters.get("size", "upload")
    if size not in SIZES:
        raise bad_request(f"parameter 'size' must be one of {', '.join(SIZES)}, got {size!r}")
    max_side = _bounded(parameters, "max_side", 1, MAX_SIDE)
    timeout_us = _bounded(parameters, "timeout", 0, UINT64_MAX)  # microseconds
    _bounded(parameters, "priority", 0, UINT64_MAX)  # checked; it changes nothing here
    timeout_s = timeout_us / 1e6 if timeout_us else None  # 0: the server's own deadline
    return size, max_side, timeout_s


def _bounded(parameters: dict, key: str, low: int, high: int) -> int | None:
    """An integer parameter within [low, high] (the ranges the OpenAPI document declares)."""
    value = int_parameter(parameters, key, "request")
    if value is not None and not low <= value <= high:
        raise bad_request(f"parameter {key!r} must be an integer in {low}..{high}, got {value}")
    return value


def _outputs(wire: WireRequest, model: ModelDir, binary_default: bool) -> tuple[OutputChoice, ...]:
    names = [spec.name for spec in output_specs(model)]
    if not wire.outputs:
        return tuple(OutputChoice(name, binary_default) for name in names)
    choices, seen = [], set()
    for requested in wire.outputs:
        where = f"output {requested.name!r}"
        if requested.name not in names:
            raise bad_request(
                f"unexpected output {requested.name!r}; this model has {', '.join(names)}"
            )
        if requested.name in seen:
            raise bad_request(f"output {requested.name!r} requested more than once")
        extra = sorted(set(requested.parameters) - {"binary_data"})
        if extra:
            raise bad_request(f"{where}: parameter(s) {extra} are not supported (binary_data)")
        seen.add(requested.name)
        binary = bool_parameter(requested.parameters, "binary_data", binary_default, where)
        choices.append(OutputChoice(requested.name, binary))
    return tuple(choices)


def infer_response(
    request: InferRequest, model: ModelDir, frames: Sequence[FrameResult]
) -> WireResponse:
    """The protocol response: each output the request chose, stacked over its frames."""
    if len(frames) != request.frames:
        raise ValueError(f"{len(frames)} results for a request of {request.frames} frame(s)")
    specs = {spec.name: spec for spec in output_specs(model)}
    task_names = ",".join(t.name for t in request.tasks)
    outputs = []
    for choice in request.outputs:
        data = _stacked(choice.name, request, model, frames)
        parameters = {"tasks": task_names} if choice.name in ROUTER_OUTPUTS else {}
        outputs.append(
            WireTensor(choice.name, specs[choice.name].datatype, data.shape, data, parameters)
        )
    return WireResponse(
        model_name=model.name,
        model_version=model.version,
        id=request.id,
        outputs=tuple(outputs),
        binary_outputs=frozenset(c.name for c in request.outputs if c.binary),
    )


def _stacked(
    name: str, request: InferRequest, model: ModelDir, frames: Sequence[FrameResult]
) -> np.ndarray:
    if name in ROUTER_OUTPUTS:
        rows = [getattr(frame, name) for frame in frames]  # (T, L, E) or (T, L) each
    else:
        rows = [frame.maps[name] for frame in frames]
    dtype = np.float32 if name in ROUTER_OUTPUTS else KIND_DTYPES[model.task(name).kind]
    # One frame: a view with the frame axis added, no copy (a camera-size map is megabytes).
    stacked = rows[0][None] if len(rows) == 1 else np.stack(rows)
    return np.ascontiguousarray(stacked, dtype)
