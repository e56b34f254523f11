"""Reading and checking an exported model directory (docs/architecture.md, contract 3) with
the contract's own schema and rules (``export/contract.py``, which the exporter writes with).

Everything here runs before the first request, so that a missing file, a corrupt graph or a
metadata file from an incompatible exporter stops the server at start with a message naming
the problem, instead of failing on the first prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export.contract import (
    GRAPH_INPUTS,
    ROUTER_OUTPUTS,
    AdapterInfo,
    InputInfo,
    Metadata,
    MetadataError,
    TaskInfo,
    read_metadata,
)

# The contract's names the server's other modules take from here.
__all__ = ["GRAPH_INPUTS", "ROUTER_OUTPUTS", "ModelDir", "ModelDirError", "TaskInfo"]


class ModelDirError(RuntimeError):
    """The model directory cannot be served; the message says why and where."""


@dataclass(frozen=True)
class ModelDir:
    """A checked model directory: its metadata, typed all the way down, and where it lies; and
    what the repository serves it as (server/repository.py): a name (its folder's; a lone
    ``--model-dir``: the metadata's) and a version (its version folder's number, else 1)."""

    path: Path
    metadata: Metadata
    served_name: str | None = None  # None: the metadata's name
    served_version: str = "1"

    @property
    def graphs(self) -> dict[str, Path]:
        """Dispatch mode -> graph file (each one checked to exist, with its recorded hash)."""
        return {mode: self.path / entry.file for mode, entry in self.metadata.graphs.items()}

    @property
    def name(self) -> str:
        return self.served_name or self.metadata.name

    @property
    def version(self) -> str:
        """The version requests name (the protocol's): the repository's, not the export's."""
        return self.served_version

    @property
    def checkpoint(self) -> str:
        """The export's own version, ``<step>-<sha8 of the checkpoint>`` (metadata.json)."""
        return self.metadata.version

    @property
    def tasks(self) -> tuple[TaskInfo, ...]:
        return self.metadata.tasks

    @property
    def task_names(self) -> tuple[str, ...]:
        return self.metadata.task_names

    @property
    def input(self) -> InputInfo:
        return self.metadata.input

    @property
    def height(self) -> int:
        return self.metadata.input.height

    @property
    def width(self) -> int:
        return self.metadata.input.width

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.metadata.input.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.metadata.input.std

    @property
    def adapters(self) -> AdapterInfo:
        return self.metadata.adapters

    @property
    def provider_graph(self) -> dict[str, str]:
        return self.metadata.provider_graph

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.metadata.io.outputs

    def task(self, name: str) -> TaskInfo:
        return next(t for t in self.tasks if t.name == name)

    def graph_for(self, provider: str) -> Path:
        """The graph export chose for ``provider``; ``dense`` runs everywhere: the default."""
        variant = self.provider_graph.get(provider, "dense")
        return self.graphs.get(variant) or next(iter(self.graphs.values()))


def load_model_dir(
    path: Path, verify_hashes: bool = True, name: str | None = None, version: str = "1"
) -> ModelDir:
    """Read ``metadata.json`` and check it (schema, registry, graph files and their hashes);
    served as ``name`` (default: the metadata's) and ``version``."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist (set --model-dir)")
    if not any(path.iterdir()):  # what Docker mounts for a host path that does not exist
        raise ModelDirError(f"model directory {path} is empty: is the path mounted there right?")
    try:
        return ModelDir(path, read_metadata(path, verify_hashes), name, version)
    except MetadataError as error:
        raise ModelDirError(str(error)) from None
