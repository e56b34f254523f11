"""The committed demo export is exactly what ``export/to_onnx.py`` makes from the committed
demo checkpoint (the serving install has no torch, so both are committed: they must agree)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from export.contract import read_metadata
from model.config import Routing

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo"
# The one command that made demo/model (also in demo/README.md).
EXPORT_ARGS = ("demo/ckpt.pt", "-o", "{out}", "--name", "ase-demo")


def test_committed_demo_export_is_reproduced_byte_for_byte(tmp_path):
    assert (DEMO / "ckpt.pt").is_file(), "demo/ckpt.pt is missing"
    assert (DEMO / "model" / "metadata.json").is_file(), "demo/model is missing"
    out = tmp_path / "model"
    args = [arg.format(out=out) for arg in EXPORT_ARGS]
    result = subprocess.run(
        [sys.executable, "export/to_onnx.py", *args], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    committed = sorted(p.name for p in (DEMO / "model").iterdir())
    assert sorted(p.name for p in out.iterdir()) == committed
    for name in committed:
        assert (out / name).read_bytes() == (DEMO / "model" / name).read_bytes(), name
    metadata = read_metadata(out)
    assert metadata.name == "ase-demo"
    assert metadata.adapters.spec == "16/3/1/4" and metadata.adapters.routing is Routing.ASE
