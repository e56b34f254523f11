"""The model directory's fixed facts (docs/architecture.md, contract 3), in one place: what
``export/metadata.py`` writes and ``server/modeldir.py`` checks.

Standard library only: the serving install, which has no torch, imports this module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"
GRAPH_INPUTS = ("images", "stream_image", "stream_task")
ROUTER_OUTPUTS = ("expert_tokens", "shared_gate_mass")  # after the task maps, in this order


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (graphs are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
