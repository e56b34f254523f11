"""Tiny exported model directories for tests (the export tests, and the server tests once they
switch from ``tests/server/fake_model.py``): a real ASE network, exported by the real exporter.

About 4-8 s per graph on 2 CPU cores; share the result with a module- or session-scoped fixture.
"""

from __future__ import annotations

from pathlib import Path

from export.to_onnx import export_checkpoint
from model.checkpoint import save_checkpoint
from tests.model.tiny import tiny_model

SPEC_OF_VARIANT = {
    "ase": "16/3/1/4",
    "moe": "16/4/0/4",
    "naive_shared": "16/3/1/4",
    "lora": "16/3/1/4",
    "none": "16/3/1/4",
}


def write_tiny_checkpoint(path: Path, routing: str = "ase", spec: str | None = None, seed: int = 0):
    """A checkpoint of a tiny model (32 px, patch 8, width 32, 2 blocks) with random adapters."""
    model = tiny_model(routing, spec=spec or SPEC_OF_VARIANT[routing], seed=seed).eval()
    return save_checkpoint(path, model, step=seed)


def export_tiny_model_dir(
    path: Path,
    routing: str = "ase",
    spec: str | None = None,
    dispatch: str = "auto",
    fp16: bool = False,
    seed: int = 0,
    name: str = "ase-tiny",
    int8: bool = False,
    lean: bool = True,
) -> Path:
    """Export a tiny model to the model directory ``path``; its checkpoint is written beside it
    as ``<path>.ckpt.pt``. Returns ``path``."""
    path = Path(path)
    checkpoint = write_tiny_checkpoint(path.with_name(path.name + ".ckpt.pt"), routing, spec, seed)
    return export_checkpoint(
        checkpoint, path, dispatch=dispatch, fp16=fp16, int8=int8, lean=lean, name=name
    )


def checkpoint_of(model_dir: Path) -> Path:
    return Path(model_dir).with_name(Path(model_dir).name + ".ckpt.pt")
