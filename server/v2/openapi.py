"""OpenAPI declarations for the V2 REST routes (``response_model=``, ``responses=``,
``openapi_extra=``), so that /docs and schemathesis see the protocol's shapes. Pydantic models
document; responses are built as plain dicts by ``interface.py`` and checked against these
models in the tests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


class TaskDescription(BaseModel):
    name: str
    id: int
    kind: str = Field(description="classes | probability | vector")
    channels: int
    classes: list[str] | None = None


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


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="image (BYTES [1]) or pixels (UINT8 [N, H, W, 3])")
    shape: list[int]
    datatype: str
    parameters: Parameters | None = Field(None, description="binary_data_size: its raw bytes")
    data: list[Any] | None = Field(None, description="row-major; image: the file in base64")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: Parameters | None = Field(None, description="binary_data: raw after the JSON")


class InferRequestBody(BaseModel):
    id: str | None = None
    parameters: Parameters | None = Field(
        None, description="size (upload | model), max_side, binary_data_output, timeout (us)"
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="omitted: every output")


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


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined: ``openapi_extra`` is pasted into the
    document as it is, where ``#/$defs/...`` would point at the document's root."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(item) for item in node] if isinstance(node, list) else node

    return resolve(schema)


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
INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "the JSON request; with the binary tensor data extension, raw tensors "
        "after it and the JSON's length in the Inference-Header-Content-Length header",
        "content": {
            "application/json": {"schema": inline_schema(InferRequestBody)},
            "application/octet-stream": BINARY,
        },
    }
}


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
