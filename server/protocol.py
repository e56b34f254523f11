"""Request and response schemas, and the one error body every failure uses.

The schemas document the API (OpenAPI); responses are built as plain dicts of the same shape,
so that large base64 maps are not validated twice.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

OutputFormat = Literal["json", "npz", "png"]


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. 'unsupported_media_type'")
    message: str = Field(description="what went wrong and what to do about it")
    status: int = Field(description="the HTTP status, repeated")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelRef(BaseModel):
    """The model version that answered."""

    name: str
    version: str = Field(description="the repository's version (a number, as Triton's)")
    checkpoint: str = Field(description="the export's own version: <step>-<sha8 of checkpoint>")


class ImageSize(BaseModel):
    width: int
    height: int


class TaskMap(BaseModel):
    kind: Literal["classes", "probability", "vector"]
    shape: list[int] = Field(
        description="[h, w] or [h, w, 3] of the map (the upload's size "
        "unless size or max_side ask otherwise)"
    )
    encoding: Literal["png"] = "png"
    data: str = Field(
        description="base64 PNG: uint8 class ids (classes), 0-255 (probability), normals as "
        "RGB with n = 2v/255 - 1 (vector); with visualize=true an RGB overlay on the image"
    )
    classes: list[str] | None = None
    palette: list[list[int]] | None = None


class RouterStats(BaseModel):
    expert_tokens: list[list[float]] = Field(description="[layer][expert] tokens per expert")
    shared_gate_share: list[float] = Field(description="per layer: mean shared gate weight")
    tokens_per_layer: int
    shared_experts: list[int]


class Timings(BaseModel):
    decode: float
    queue: float
    inference: float
    postprocess: float
    total: float


class MapGrid(BaseModel):
    width: int = Field(description="the maps' width")
    height: int = Field(description="the maps' height")
    scale: list[float] = Field(description="upload pixels per map pixel, [x, y]")


class PredictResponse(BaseModel):
    model: ModelRef
    provider: str
    image: ImageSize = Field(description="the upload's size, upright")
    maps: MapGrid
    tasks: dict[str, TaskMap]
    timings_ms: Timings
    router: dict[str, RouterStats] | None = None


class TaskDescription(BaseModel):
    """One served task (GET /models, and the V2 model metadata's own ``tasks`` key)."""

    name: str
    id: int
    kind: Literal["classes", "probability", "vector"]
    channels: int
    classes: list[str] | None = None
    palette: list[list[int]] | None = Field(None, description="RGB per class (GET /models)")


class ModelDescription(BaseModel):
    """One model version served."""

    name: str
    version: str = Field(description="the repository's version (a number, as Triton's)")
    checkpoint: str = Field(description="the export's own version: <step>-<sha8 of checkpoint>")
    dataset: str | None = Field(
        None, description="the class lists' dataset: 'synthetic' (the demo) or another"
    )
    training: dict[str, Any] | None = Field(
        None, description="what it learned from: data, tasks learned on photos, a note"
    )
    tasks: list[TaskDescription]
    input: dict[str, Any]
    adapters: dict[str, Any] = Field(description="N/k/S/r, routing variant, layers, tokens")
    providers: list[str] = Field(description="execution providers actually in use")
    graph: str = Field(description="the graph file served")
    max_batch: int


class ModelsResponse(BaseModel):
    default_model: str | None = Field(
        description="the model /predict runs without ?model= (null: none is served now)"
    )
    models: list[ModelDescription] = Field(description="every model version ready, by name")


class HealthResponse(BaseModel):
    status: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries: the error body for each status a route can return."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }


ERROR_DESCRIPTIONS = {
    400: "invalid_image (not an image, truncated, corrupt), empty_body, bad_multipart",
    401: "unauthorized: missing or wrong X-API-Key",
    404: "unknown_model, unknown_version: the message names the models and versions served",
    413: "payload_too_large (body over the size limit), image_too_large (pixel limit)",
    415: "unsupported_media_type: send image/*, application/octet-stream or multipart 'file'",
    422: "unknown_task, duplicate_task, invalid_parameter (a bad value, an empty tasks list)",
    500: "internal_error",
    503: "overloaded (queue full; see Retry-After) or not_ready (model still loading)",
    504: "deadline_exceeded: the request waited longer than the server's timeout",
}
