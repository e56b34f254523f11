"""The committed exports are exactly what ``export/to_onnx.py`` makes from the committed
checkpoints: the synthetic-scene demo and the photo model ``make serve`` serves (the serving
install has no torch, so both are committed: they must agree)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from export.contract import read_metadata
from model.config import Routing

REPO = Path(__file__).resolve().parents[2]
# The one command that made each committed model directory (also in docs/training.md and
# docs/model_card.md): (folder holding ckpt.pt and model/, model name, dataset).
EXPORTS = {
    "demo": ("demo", "ase-demo", "synthetic"),
    "photo": ("demo/photo", "ase-photo", "scenes_and_photos"),
}


@pytest.mark.parametrize("which", EXPORTS)
def test_committed_export_is_reproduced_byte_for_byte(tmp_path, which):
    folder, name, dataset = EXPORTS[which]
    committed_dir = REPO / folder / "model"
    assert (REPO / folder / "ckpt.pt").is_file(), f"{folder}/ckpt.pt is missing"
    assert (committed_dir / "metadata.json").is_file(), f"{folder}/model is missing"
    out = tmp_path / "model"
    args = [f"{folder}/ckpt.pt", "-o", str(out), "--name", name]
    result = subprocess.run(
        [sys.executable, "export/to_onnx.py", *args], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    committed = sorted(p.name for p in committed_dir.iterdir())
    assert sorted(p.name for p in out.iterdir()) == committed
    for file in committed:
        assert (out / file).read_bytes() == (committed_dir / file).read_bytes(), file
    metadata = read_metadata(out)
    assert metadata.name == name and metadata.dataset == dataset
    assert metadata.adapters.spec == "16/3/1/4" and metadata.adapters.routing is Routing.ASE
    assert metadata.training is not None and metadata.training.note
