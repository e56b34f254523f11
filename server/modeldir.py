"""Reading and checking an exported model directory (docs/architecture.md, contract 3).

Everything here runs before the first request, so that a missing file, a corrupt graph or a
metadata file from an incompatible exporter stops the server at start with a message naming
the problem, instead of failing on the first prediction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from export.contract import (
    GRAPH_INPUTS,
    METADATA_FILE,
    ROUTER_OUTPUTS,
    SCHEMA_VERSION,
    file_sha256,
)
from model.tasks import TASK_NAMES, TASKS


class ModelDirError(RuntimeError):
    """The model directory cannot be served; the message says why and where."""


class _TaskEntry(BaseModel):
    name: str
    id: int
    kind: str
    channels: int = Field(ge=1)
    classes: list[str] | None = None
    palette: list[tuple[int, int, int]] | None = None


class _InputEntry(BaseModel):
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    layout: str = "NCHW"
    color: str = "RGB"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class _AdaptersEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    spec: str | None = None
    experts: int = Field(ge=0)
    k: int = Field(ge=0)
    shared: int = Field(ge=0)
    rank: int = Field(ge=0)
    routing: str
    layers: int = Field(ge=0)
    tokens_per_stream: int = Field(ge=0)
    shared_experts: list[int] = []


class _GraphEntry(BaseModel):
    file: str
    sha256: str | None = None


class _IoEntry(BaseModel):
    inputs: list[str]
    outputs: list[str]


class _Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    schema_version: int
    name: str
    version: str
    tasks: list[_TaskEntry] = Field(min_length=1)
    dataset: str | None = None
    input: _InputEntry
    adapters: _AdaptersEntry
    graphs: dict[str, _GraphEntry] = Field(min_length=1)
    provider_graph: dict[str, str] = {}
    precision: str = "fp32"
    io: _IoEntry


@dataclass(frozen=True)
class TaskInfo:
    """One task as this model serves it; classes and palettes come from the exported registry."""

    name: str
    id: int
    kind: str
    channels: int
    classes: tuple[str, ...] | None
    palette: tuple[tuple[int, int, int], ...] | None


@dataclass(frozen=True)
class ModelDir:
    path: Path
    name: str
    version: str
    tasks: tuple[TaskInfo, ...]
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    adapters: dict[str, Any]
    graphs: dict[str, Path]
    provider_graph: dict[str, str]
    outputs: tuple[str, ...]
    raw: dict[str, Any]

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def task(self, name: str) -> TaskInfo:
        return next(t for t in self.tasks if t.name == name)

    def graph_for(self, provider: str) -> Path:
        """The graph export chose for ``provider``; ``dense`` runs everywhere: the default."""
        variant = self.provider_graph.get(provider, "dense")
        return self.graphs.get(variant) or next(iter(self.graphs.values()))


def load_model_dir(path: Path, verify_hashes: bool = True) -> ModelDir:
    """Read ``metadata.json``, check it against the task registry and the graph files."""
    path = Path(path)
    metadata = _read_metadata(path)
    tasks = tuple(_check_task(entry, path) for entry in metadata.tasks)
    _check_io(metadata, tasks, path)
    graphs = {
        variant: _check_graph(path, entry, verify_hashes)
        for variant, entry in metadata.graphs.items()
    }
    for provider, variant in metadata.provider_graph.items():
        if variant not in graphs:
            raise ModelDirError(
                f"{path / METADATA_FILE}: provider_graph maps {provider} to {variant!r}, "
                f"but graphs only has {sorted(graphs)}"
            )
    return ModelDir(
        path=path,
        name=metadata.name,
        version=metadata.version,
        tasks=tasks,
        height=metadata.input.height,
        width=metadata.input.width,
        mean=metadata.input.mean,
        std=metadata.input.std,
        adapters=metadata.adapters.model_dump(),
        graphs=graphs,
        provider_graph=dict(metadata.provider_graph),
        outputs=tuple(metadata.io.outputs),
        raw=metadata.model_dump(mode="json"),
    )


def _read_metadata(path: Path) -> _Metadata:
    file = path / METADATA_FILE
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist (set --model-dir)")
    if not file.is_file():
        raise ModelDirError(f"{file} is missing: is {path} an exported model directory?")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelDirError(f"{file} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        found = data.get("schema_version") if isinstance(data, dict) else None
        raise ModelDirError(
            f"{file}: schema_version {found!r} is not supported (this server reads "
            f"{SCHEMA_VERSION})"
        )
    try:
        return _Metadata.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise ModelDirError(f"{file} does not follow the metadata contract: {problems}") from None


def _check_task(entry: _TaskEntry, path: Path) -> TaskInfo:
    where = f"{path / METADATA_FILE}: task {entry.name!r}"
    if entry.name not in TASKS:
        raise ModelDirError(f"{where} is not in the task registry ({', '.join(TASK_NAMES)})")
    if entry.id != TASK_NAMES.index(entry.name) or entry.kind != TASKS[entry.name].kind:
        raise ModelDirError(f"{where}: id/kind {entry.id}/{entry.kind} disagree with the registry")
    if entry.kind == "classes" and (
        not entry.classes or len(entry.classes) != entry.channels or not entry.palette
    ):
        raise ModelDirError(f"{where} needs one class name and palette colour per channel")
    return TaskInfo(
        name=entry.name,
        id=entry.id,
        kind=entry.kind,
        channels=entry.channels,
        classes=tuple(entry.classes) if entry.classes else None,
        palette=tuple(tuple(c) for c in entry.palette) if entry.palette else None,
    )


def _check_io(metadata: _Metadata, tasks: tuple[TaskInfo, ...], path: Path) -> None:
    expected_outputs = [t.name for t in sorted(tasks, key=lambda t: t.id)] + list(ROUTER_OUTPUTS)
    if metadata.io.outputs != expected_outputs or metadata.io.inputs != list(GRAPH_INPUTS):
        raise ModelDirError(
            f"{path / METADATA_FILE}: io must be inputs {list(GRAPH_INPUTS)} and outputs "
            f"{expected_outputs}, got {metadata.io.inputs} and {metadata.io.outputs}"
        )


def _check_graph(path: Path, entry: _GraphEntry, verify_hash: bool) -> Path:
    file = path / entry.file
    if not file.is_file():
        raise ModelDirError(f"graph file {file} named in metadata.json is missing")
    if verify_hash and entry.sha256:
        digest = file_sha256(file)
        if digest != entry.sha256:
            raise ModelDirError(
                f"graph file {file} is corrupt: sha256 {digest[:12]}... differs from "
                f"metadata.json's {entry.sha256[:12]}..."
            )
    return file
