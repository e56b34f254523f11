"""Put this folder on PYTHONPATH to make a Python like the GPU machine's, which has no pydantic
(docs/benchmarks.md, "GPU"): the copies of pydantic and of its requirements that this
environment installed are hidden; a copy elsewhere on ``sys.path`` (the carried wheels' install
of bench/gpu_device.sh) is found. Python imports ``sitecustomize`` at start-up by itself."""

from __future__ import annotations

import site
import sys
from importlib.machinery import ModuleSpec, PathFinder

HIDDEN = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection")
"""What the GPU machine lacks of what export/contract.py imports (its package list)."""


class HideInstalled:
    """A meta path finder ahead of the others: top-level ``HIDDEN`` names are looked up only
    outside this environment's site-packages; submodules are found inside their package."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if path is not None or name not in HIDDEN:
            return None
        installed = {*site.getsitepackages(), site.getusersitepackages()}
        spec = PathFinder.find_spec(name, [entry for entry in sys.path if entry not in installed])
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
        return spec


sys.meta_path.insert(0, HideInstalled())
