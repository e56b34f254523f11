"""OpenAPI declarations for the V2 REST routes (``response_model=``, ``responses=``,
``openapi_extra=``), so that /docs and schemathesis see the protocol's shapes. Pydantic models
document the responses (built as plain dicts by ``interface.py`` and checked against these
models in the tests); the request body is a JSON schema written out, with what
``interface.py`` checks that JSON Schema can say (one input, its name, datatype and shape form,
parameter ranges), and ``describe_model`` adds the served model's names once it is loaded."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from server.modeldir import ModelDir
from server.protocol import TaskDescription
from server.v2.interface import IMAGE, MAX_SIDE, PIXELS, SIZES, UINT64_MAX, output_specs

Parameters = dict[str, bool | int | float | str]


class V2ErrorResponse(BaseModel):
    error: str = Field(description="what went wrong and what to do about it")


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="binary_tensor_data: raw tensors after the JSON")


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size")


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    tasks: list[TaskDescription] = Field(description="this server's own: what each output means")


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferResponseBody(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


ERROR_DESCRIPTIONS = {
    400: "a request this model cannot serve: malformed, wrong inputs, outputs or parameters",
    401: "missing or wrong API key",
    404: "unknown model or version",
    413: "body, image or pixels over the server's limits",
    415: "an image or form body (send the inference JSON) or an unsupported Content-Encoding",
    503: "not ready, or the queue is full (see Retry-After)",
    504: "the request waited longer than the server's deadline",
}
BINARY = {"schema": {"type": "string", "format": "binary"}}
SCALAR = {"type": ["boolean", "integer", "number", "string"]}
UINT64 = {"type": "integer", "minimum": 0, "maximum": UINT64_MAX}
# The request parameters as server/v2/interface.py checks them (no others: unknown ones are 400).
REQUEST_PARAMETERS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "size": {
            "enum": list(SIZES),
            "description": "upload: maps at the image's size; model: at "
            "the model's input size (with max_side: bounded by it)",
        },
        "max_side": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_SIDE,
            "description": "the maps' longest side at most this, aspect kept",
        },
        "binary_data_output": {"type": "boolean", "description": "outputs raw after the JSON"},
        "timeout": {**UINT64, "description": "microseconds; 0: the server's own deadline"},
        "priority": {**UINT64, "description": "accepted, no effect"},
    },
}
TENSOR_PARAMETERS = {"type": "object", "additionalProperties": SCALAR}


def tensor_input(name: str, datatype: str, shape: dict, data: dict) -> dict:
    """The JSON schema of one request input: its fixed name and datatype, its shape and data."""
    fields = {"name": {"const": name}, "datatype": {"const": datatype}, "shape": shape}
    return {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {**fields, "data": data, "parameters": TENSOR_PARAMETERS},
    }


DIMENSION = {"type": "integer", "minimum": 1, "maximum": UINT64_MAX}
IMAGE_INPUT = tensor_input(
    IMAGE,
    "BYTES",
    {"const": [1]},
    {
        "type": "array",
        "items": {"type": "string", "minLength": 1},
        "minItems": 1,
        "maxItems": 1,
        "description": "one encoded image file (JPEG, PNG, ...) in base64",
    },
)
PIXELS_INPUT = tensor_input(
    PIXELS,
    "UINT8",
    {
        "type": "array",
        "prefixItems": [DIMENSION, DIMENSION, DIMENSION, {"const": 3}],
        "items": False,
        "minItems": 4,
        "description": "[N, H, W, 3]",
    },
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 255},
        "description": "N * H * W * 3 values, row-major",
    },
)
EXAMPLE = {  # two RGB pixels of one frame, the class map back as JSON
    "inputs": [
        {
            "name": PIXELS,
            "datatype": "UINT8",
            "shape": [1, 1, 2, 3],
            "data": [0, 128, 255, 255, 128, 0],
        }
    ],
    "outputs": [{"name": "semseg"}],
}


def infer_request_schema(output_names: list[str] | None = None) -> dict[str, Any]:
    """The JSON request body (the binary extension's raw part cannot be described: its JSON
    header is this less ``data``, with ``parameters.binary_data_size``). ``output_names``: the
    served model's outputs, once it is known."""
    name = {"type": "string"} if output_names is None else {"enum": list(output_names)}
    output = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": name,
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"binary_data": {"type": "boolean"}},
            },
        },
    }
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": REQUEST_PARAMETERS,
            "inputs": {
                "type": "array",
                "items": {"oneOf": [IMAGE_INPUT, PIXELS_INPUT]},
                "minItems": 1,
                "maxItems": 1,
                "description": "exactly one: image or pixels",
            },
            "outputs": {"type": "array", "items": output, "description": "omitted: every output"},
        },
    }


def infer_openapi(output_names: list[str] | None = None) -> dict[str, Any]:
    """The infer routes' ``openapi_extra``: the request body."""
    return {
        "requestBody": {
            "required": True,
            "description": "the JSON request; with the binary tensor data extension, the JSON "
            "header then raw tensors, the header's length in Inference-Header-Content-Length",
            "content": {
                "application/json": {
                    "schema": infer_request_schema(output_names),
                    "example": EXAMPLE,
                },
                "application/octet-stream": BINARY,
            },
        }
    }


INFER_OPENAPI = infer_openapi()


def describe_model(document: dict[str, Any], models: list[ModelDir]) -> None:
    """Patch the generated OpenAPI ``document`` for the served models: their names and versions
    as the only path values, their output names in the infer request body."""
    names = list(dict.fromkeys(spec.name for model in models for spec in output_specs(model)))
    values = {
        "model_name": sorted({model.name for model in models}),
        "model_version": sorted({model.version for model in models}, key=int),
    }
    for path, item in document["paths"].items():
        if not path.startswith("/v2/models/"):
            continue
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in values:
                    parameter["schema"] = {"type": "string", "enum": values[parameter["name"]]}
            if path.endswith("/infer"):
                operation["requestBody"] = infer_openapi(names)["requestBody"]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: the protocol's error body for each status a route can return."""
    return {s: {"model": V2ErrorResponse, "description": ERROR_DESCRIPTIONS[s]} for s in statuses}


def infer_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "JSON, or JSON then raw tensors (Inference-Header-Content-Length)",
            "content": {"application/octet-stream": BINARY},
        },
        **error_responses(400, 401, 404, 413, 415, 503, 504),
    }
