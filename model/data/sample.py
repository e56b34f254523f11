"""The one record every data source returns: a ``Sample`` of NumPy arrays (see the package
docstring in ``model/data/__init__.py`` for the meaning of every value)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np

from model.tasks import IGNORE_INDEX

_LABEL_FIELDS = ("semseg", "parts", "saliency", "edges")
_SALIENCY_DTYPES = (np.uint8, np.float32)  # float32: a soft target


@dataclass(frozen=True)
class Sample:
    """One image and the ground truth of all five tasks, all of the same height and width."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    semseg: np.ndarray  # (H, W) uint8 class ids, 255 = ignore
    parts: np.ndarray  # (H, W) uint8 part ids, 255 = ignore (all 255 when no person)
    # (H, W) uint8 {0, 1}, or float32 in [0, 1] (a teacher's probability, a soft target);
    # 255 = ignore
    saliency: np.ndarray
    normals: np.ndarray  # (H, W, 3) float32 unit vectors (x right, y up, z to camera), 0 if invalid
    normals_valid: np.ndarray  # (H, W) bool
    edges: np.ndarray  # (H, W) uint8 {0, 1}, 255 = ignore
    name: str = ""

    def __post_init__(self) -> None:
        height, width = self.image.shape[:2]
        if self.image.shape != (height, width, 3) or self.image.dtype != np.uint8:
            raise ValueError(f"{self.name}: image must be (H, W, 3) uint8, got {self.image.shape}")
        for name in _LABEL_FIELDS:
            label = getattr(self, name)
            dtypes = _SALIENCY_DTYPES if name == "saliency" else (np.uint8,)
            if label.shape != (height, width) or label.dtype not in dtypes:
                expected = " or ".join(np.dtype(dtype).name for dtype in dtypes)
                raise ValueError(
                    f"{self.name}: {name} must be ({height}, {width}) {expected}, "
                    f"got {label.shape} {label.dtype}"
                )
        if self.normals.shape != (height, width, 3) or self.normals.dtype != np.float32:
            raise ValueError(f"{self.name}: normals must be ({height}, {width}, 3) float32")
        if self.normals_valid.shape != (height, width) or self.normals_valid.dtype != bool:
            raise ValueError(f"{self.name}: normals_valid must be ({height}, {width}) bool")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.image.shape[0], self.image.shape[1]

    @property
    def has_person(self) -> bool:
        """Whether the parts task is labelled at all (PASCAL ignores parts without a person)."""
        return bool((self.parts != IGNORE_INDEX).any())

    def map_arrays(self, function: Callable[[str, np.ndarray], np.ndarray]) -> Sample:
        """A new sample with ``function(name, array)`` applied to every array field."""
        changes = {
            f.name: function(f.name, getattr(self, f.name))
            for f in fields(self)
            if f.name != "name"
        }
        return replace(self, **changes)
