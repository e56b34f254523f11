"""``metadata.json``: the one contract between export and the server (docs/architecture.md,
contract 3). Written here from the checkpoint's config and the task registry; read back and
validated here too, so an export that the server would refuse fails at export time.

Deterministic on purpose: no timestamps, keys in a fixed order, the version derived from the
checkpoint's hash, so the same checkpoint always gives a byte-identical file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export.contract import (
    GRAPH_INPUTS,
    METADATA_FILE,
    ROUTER_OUTPUTS,
    SCHEMA_VERSION,
    file_sha256,
)
from model.config import ModelConfig
from model.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # what training normalised with
from model.tasks import DATASETS, TASK_NAMES, TASKS

GRAPH_FILES = {
    "dense": "model.dense.onnx",
    "sparse": "model.sparse.onnx",
    "int8": "model.int8.onnx",
}
GRAPH_PRECISION = {"int8": "int8"}
"""Graphs whose precision differs from the directory's ``precision`` say so in their entry."""
INT8_SCHEME = (
    "dynamic: int8 weights in a 7-bit range per output channel, uint8 activations per tensor"
)
TASK_KEYS = ("name", "id", "kind", "channels", "classes", "palette")
PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class MetadataError(ValueError):
    """A metadata file that breaks contract 3; the message names the field."""


def output_names(config: ModelConfig) -> list[str]:
    """Graph outputs in contract order: the model's tasks by id, then the router statistics."""
    return [*config.tasks, *ROUTER_OUTPUTS]


def adapters_entry(config: ModelConfig) -> dict[str, Any]:
    """The ``adapters`` block. Variants without an expert bank report ``experts: 0``, no
    k/shared, and the rank of their single adapter (0 for ``none``)."""
    adapters, backbone = config.adapters, config.backbone
    bank = adapters.has_experts
    rank = adapters.rank if bank else (adapters.active_rank if adapters.routing == "lora" else 0)
    return {
        "spec": adapters.spec,
        "experts": adapters.experts if bank else 0,
        "k": adapters.k if bank else 0,
        "shared": adapters.shared if bank else 0,
        "rank": rank,
        "routing": adapters.routing,
        "layers": backbone.depth,
        "tokens_per_stream": backbone.tokens,
        "shared_experts": list(range(adapters.routed, adapters.experts)) if bank else [],
    }


def tasks_entry(config: ModelConfig) -> list[dict[str, Any]]:
    described = DATASETS[config.dataset].describe(config.tasks)["tasks"]
    return [{key: task[key] for key in TASK_KEYS} for task in described]


def build_metadata(
    config: ModelConfig,
    *,
    name: str,
    graphs: dict[str, Path],
    provider_graph: dict[str, str],
    precision: str,
    opset: int,
    source: dict[str, Any],
    exporter: dict[str, str],
    quantized_from: str | None = None,
) -> dict[str, Any]:
    """The metadata dict; ``graphs`` maps dispatch mode -> written graph file (hashed here);
    ``quantized_from``: the fp32 graph the ``int8`` graph was made from."""
    size = config.backbone.image_size
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version_string(source.get("step"), source["checkpoint_sha256"]),
        "tasks": tasks_entry(config),
        "dataset": config.dataset,
        "input": {
            "height": size,
            "width": size,
            "layout": "NCHW",
            "color": "RGB",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "adapters": adapters_entry(config),
        "graphs": {mode: graph_entry(mode, path, quantized_from) for mode, path in graphs.items()},
        "provider_graph": dict(provider_graph),
        "precision": precision,
        "opset": opset,
        "io": {"inputs": list(GRAPH_INPUTS), "outputs": output_names(config)},
        "source": dict(source),
        "exporter": dict(exporter),
    }


def graph_entry(mode: str, path: Path, quantized_from: str | None = None) -> dict[str, str]:
    """One ``graphs`` entry; the int8 graph also names its precision, scheme and fp32 source
    (keys the server ignores: it picks graphs by ``provider_graph`` alone)."""
    entry = {"file": path.name, "sha256": file_sha256(path)}
    if mode in GRAPH_PRECISION:
        entry |= {"precision": GRAPH_PRECISION[mode], "quantization": INT8_SCHEME}
        entry |= {"quantized_from": quantized_from} if quantized_from else {}
    return entry


def graph_precision(metadata: dict[str, Any], mode: str) -> str:
    """The precision graph ``mode`` computes in: its own entry's, else the directory's."""
    return metadata["graphs"][mode].get("precision", metadata["precision"])


def version_string(step: int | None, checkpoint_sha256: str) -> str:
    """``<step>-<sha8>``: the same checkpoint always gets the same version (no clock)."""
    return f"{int(step or 0)}-{checkpoint_sha256[:8]}"


def write_metadata(directory: Path, metadata: dict[str, Any]) -> Path:
    """Validate, then write ``metadata.json``; keys keep the contract's order."""
    validate_metadata(metadata, Path(directory))
    path = Path(directory) / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return path


def read_metadata(directory: Path, verify_hashes: bool = True) -> dict[str, Any]:
    """Read and validate a model directory's metadata (graph files and hashes included)."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise MetadataError(f"{path} is missing")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MetadataError(f"{path} is not valid JSON: {error}") from None
    validate_metadata(metadata, Path(directory), verify_hashes)
    return metadata


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise MetadataError(message)


def validate_metadata(
    metadata: dict[str, Any], directory: Path | None = None, verify_hashes: bool = True
) -> None:
    """Contract 3's rules: schema, tasks against the registry, io names, graphs and providers."""
    _require(metadata.get("schema_version") == SCHEMA_VERSION, "schema_version must be 1")
    for key in ("name", "version", "tasks", "input", "adapters", "graphs", "io", "precision"):
        _require(key in metadata, f"metadata has no {key!r}")
    _validate_tasks(metadata["tasks"])
    ids = [task["id"] for task in metadata["tasks"]]
    _require(ids == sorted(ids), "tasks must be listed by increasing id")
    expected = [*(task["name"] for task in metadata["tasks"]), *ROUTER_OUTPUTS]
    _require(metadata["io"].get("inputs") == list(GRAPH_INPUTS), "io.inputs differ from contract")
    _require(metadata["io"].get("outputs") == expected, f"io.outputs must be {expected}")
    _require(metadata["precision"] in ("fp32", "fp16"), "precision must be fp32 or fp16")
    graphs = metadata["graphs"]
    _require(bool(graphs) and set(graphs) <= set(GRAPH_FILES), f"graphs must be in {GRAPH_FILES}")
    for provider, mode in metadata.get("provider_graph", {}).items():
        _require(mode in graphs, f"provider_graph maps {provider} to missing graph {mode!r}")
    if directory is not None:
        for mode, entry in graphs.items():
            file = directory / entry["file"]
            _require(file.is_file(), f"graph {mode}: {file} is missing")
            if verify_hashes:
                _require(file_sha256(file) == entry["sha256"], f"graph {mode}: {file} hash differs")


def _validate_tasks(tasks: list[dict[str, Any]]) -> None:
    _require(bool(tasks), "tasks must not be empty")
    for task in tasks:
        name = task.get("name")
        _require(name in TASKS, f"task {name!r} is not in the registry")
        _require(task.get("id") == TASK_NAMES.index(name), f"task {name}: id differs from registry")
        _require(task.get("kind") == TASKS[name].kind, f"task {name}: kind differs from registry")
        if task["kind"] == "classes":
            classes, palette = task.get("classes") or [], task.get("palette") or []
            _require(
                len(classes) == len(palette) == task.get("channels"),
                f"task {name}: needs one class name and palette colour per channel",
            )
