"""The model directory's contract (docs/architecture.md, contract 3), in one place: its fixed
names, the schema of ``metadata.json`` with every rule it must follow, and how a directory is
read and checked. The exporter writes with it (``export/metadata.py``), the server reads with
it (``server/modeldir.py``), and the tests' fake model directory is built from it.

Torch-free (pydantic, the task registry and the config vocabulary): the serving install
imports it, and so does ``export.metadata`` without torch, PIL or scipy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

from model.config import Routing
from model.tasks import DATASETS, TASK_NAMES, TASKS, TaskKind

SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"
GRAPH_INPUTS = ("images", "stream_image", "stream_task")
ROUTER_OUTPUTS = ("expert_tokens", "shared_gate_mass")  # after the task maps, in this order
GRAPH_FILES = {
    "dense": "model.dense.onnx",
    "sparse": "model.sparse.onnx",
    "int8": "model.int8.onnx",
}
PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The graphs' input normalisation of RGB in [0, 1]; training normalises with the same."""

GraphMode = Literal["dense", "sparse", "int8"]
Colour = tuple[
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
]
Count = Annotated[int, Field(ge=0)]


class MetadataError(ValueError):
    """A model directory that breaks contract 3; the message names the file and the field."""


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskInfo(_Entry):
    """One task as the model serves it; classes and palettes are the exported registry's."""

    name: str
    id: int
    kind: TaskKind
    channels: int = Field(ge=1)
    classes: tuple[str, ...] | None = None
    palette: tuple[Colour, ...] | None = None

    @model_validator(mode="after")
    def _agrees_with_the_registry(self) -> TaskInfo:
        where = f"task {self.name!r}"
        if self.name not in TASKS:
            raise ValueError(f"{where} is not in the task registry ({', '.join(TASK_NAMES)})")
        if self.id != TASK_NAMES.index(self.name) or self.kind != TASKS[self.name].kind:
            raise ValueError(f"{where}: id/kind {self.id}/{self.kind} disagree with the registry")
        if self.kind != "classes":
            if self.classes is not None or self.palette is not None:
                raise ValueError(f"{where}: only 'classes' tasks have class names and a palette")
            return self
        counts = (len(self.classes or ()), len(self.palette or ()))
        if counts != (self.channels, self.channels):
            raise ValueError(
                f"{where} needs one class name and one palette colour per channel "
                f"({self.channels}), got {counts[0]} names and {counts[1]} colours"
            )
        return self


class InputInfo(_Entry):
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    layout: Literal["NCHW"] = "NCHW"
    color: Literal["RGB"] = "RGB"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[
        Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]
    ] = IMAGENET_STD


class AdapterInfo(_Entry):
    """The expert bank as the router statistics count it: routed experts ``0 .. N-S-1``, shared
    experts ``N-S .. N-1``; variants without a bank have ``experts: 0``."""

    spec: str
    experts: Count
    k: Count
    shared: Count
    rank: Count
    routing: Routing
    layers: Count
    tokens_per_stream: Count
    shared_experts: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _counts_agree(self) -> AdapterInfo:
        if self.k + self.shared > self.experts or (self.experts > 0) != self.routing.has_experts:
            raise ValueError(
                f"experts/k/shared {self.experts}/{self.k}/{self.shared} do not fit routing "
                f"'{self.routing}'"
            )
        if self.shared_experts != tuple(range(self.experts - self.shared, self.experts)):
            raise ValueError(f"shared_experts must be the last {self.shared} expert indices")
        return self

    @property
    def routed(self) -> int:
        return self.experts - self.shared


class GraphInfo(_Entry):
    """One graph file. The int8 graph also names its precision, scheme and fp32 source (the
    server picks graphs by ``provider_graph`` alone)."""

    file: str = Field(pattern=r"^[\w.-]+$")  # a file inside the model directory
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # required: a corrupt graph stops the server
    precision: Literal["int8"] | None = None
    quantization: str | None = None
    quantized_from: GraphMode | None = None

    @model_serializer(mode="wrap")
    def _without_absent_keys(self, handler: Any) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class IoInfo(_Entry):
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class SourceInfo(_Entry):
    checkpoint: str | None = None
    checkpoint_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    step: Count = 0


class TrainingInfo(_Entry):
    """What the model learned from, for users and the page: its data, the tasks it also
    learned on real photos, and a plain note of what its maps are good for and what not."""

    data: tuple[str, ...] = Field(min_length=1)
    photo_tasks: tuple[str, ...] = ()
    note: str = Field(min_length=1)

    @model_validator(mode="after")
    def _known_tasks(self) -> TrainingInfo:
        unknown = [task for task in self.photo_tasks if task not in TASKS]
        if unknown:
            raise ValueError(f"photo_tasks {unknown} are not in the task registry")
        return self


class Metadata(_Entry):
    """``metadata.json``; keys serialise in this order (the exporter's files are deterministic)."""

    schema_version: Literal[1]
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    tasks: tuple[TaskInfo, ...] = Field(min_length=1)
    dataset: str
    input: InputInfo
    adapters: AdapterInfo
    graphs: dict[GraphMode, GraphInfo] = Field(min_length=1)
    provider_graph: dict[str, GraphMode]
    precision: Literal["fp32", "fp16"]
    opset: int = Field(ge=1)
    io: IoInfo
    source: SourceInfo
    exporter: dict[str, str]
    training: TrainingInfo | None = None  # absent in directories exported before it existed

    @model_validator(mode="after")
    def _parts_agree(self) -> Metadata:
        ids = [task.id for task in self.tasks]
        if ids != sorted(set(ids)):
            raise ValueError("tasks must be listed once each, by increasing id")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset {self.dataset!r} is not one of {', '.join(DATASETS)}")
        if self.io.inputs != GRAPH_INPUTS:
            raise ValueError(f"io.inputs must be {list(GRAPH_INPUTS)}")
        if self.io.outputs != (*self.task_names, *ROUTER_OUTPUTS):
            raise ValueError(f"io.outputs must be {[*self.task_names, *ROUTER_OUTPUTS]}")
        for provider, mode in self.provider_graph.items():
            if mode not in self.graphs:
                raise ValueError(
                    f"provider_graph maps {provider} to {mode!r}, but graphs only has "
                    f"{sorted(self.graphs)}"
                )
        return self

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(task.name for task in self.tasks)

    def graph_precision(self, mode: str) -> str:
        """The precision graph ``mode`` computes in: its own entry's, else the directory's."""
        return self.graphs[mode].precision or self.precision

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (graphs are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_metadata(data: object, where: str = METADATA_FILE) -> Metadata:
    """Validate parsed JSON against the schema; errors name ``where`` and every broken field."""
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        found = data.get("schema_version") if isinstance(data, dict) else None
        raise MetadataError(
            f"{where}: schema_version {found!r} is not supported (this reader reads "
            f"{SCHEMA_VERSION})"
        )
    try:
        return Metadata.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise MetadataError(f"{where} does not follow the metadata contract: {problems}") from None


def read_metadata(directory: Path, verify_hashes: bool = True) -> Metadata:
    """Read and validate a model directory's metadata, its graph files and their hashes."""
    file = Path(directory) / METADATA_FILE
    if not file.is_file():
        raise MetadataError(f"{file} is missing: is {directory} an exported model directory?")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MetadataError(f"{file} is not valid JSON: {error}") from None
    metadata = parse_metadata(data, str(file))
    graph_paths(metadata, Path(directory), verify_hashes)
    return metadata


def graph_paths(metadata: Metadata, directory: Path, verify_hashes: bool = True) -> dict[str, Path]:
    """Each graph's file, checked to exist and (``verify_hashes``) to have its recorded hash."""
    paths = {}
    for mode, entry in metadata.graphs.items():
        file = Path(directory) / entry.file
        if not file.is_file():
            raise MetadataError(f"graph {mode}: {file} named in {METADATA_FILE} is missing")
        if verify_hashes and (digest := file_sha256(file)) != entry.sha256:
            raise MetadataError(
                f"graph {mode}: {file} hash differs from {METADATA_FILE} (the file is corrupt: "
                f"sha256 {digest[:12]}... instead of {entry.sha256[:12]}...)"
            )
        paths[mode] = file
    return paths


def write_metadata(directory: Path, metadata: Metadata) -> Path:
    """Check the graph files against ``metadata``, then write ``metadata.json``."""
    graph_paths(metadata, Path(directory))
    path = Path(directory) / METADATA_FILE
    path.write_text(metadata.to_json(), encoding="utf-8")
    return path
