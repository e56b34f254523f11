"""Read a built photo set: ``PhotoSet(root, split)`` is a sequence of ``Sample``s (the format
every source of ``model.data`` returns), labelled by the teachers, 255 wherever a teacher has
nothing to say; ``labels(i)`` gives the stored maps themselves (the soft saliency, the person
label). NumPy and Pillow only, like the other sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.data.photos.tree import KINDS, LABELS, PhotoRecord, item_dir, read_manifest, read_png
from model.data.sample import Sample
from model.tasks import IGNORE_INDEX, PHOTO_CLASSES, TASK_NAMES

SALIENT = 128  # stored round(255 p): p > 0.5


def class_map(target: tuple[str, ...]) -> np.ndarray:
    """(256,) uint8 lookup from ``PHOTO_CLASSES`` ids to ``target``'s ids by name; a class
    ``target`` lacks, and 255, map to 255."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for index, name in enumerate(PHOTO_CLASSES):
        if name in target:
            table[index] = target.index(name)
    return table


def labelled_tasks(sample: Sample) -> tuple[str, ...]:
    """The tasks with at least one labelled pixel in ``sample`` (normals: valid pixels)."""
    has = {
        "semseg": (sample.semseg != IGNORE_INDEX).any(),
        "parts": (sample.parts != IGNORE_INDEX).any(),
        "saliency": (sample.saliency != IGNORE_INDEX).any(),
        "normals": sample.normals_valid.any(),
        "edges": (sample.edges != IGNORE_INDEX).any(),
    }
    return tuple(task for task in TASK_NAMES if has[task])


class PhotoSet:
    """One split of the set at ``root`` (``python -m model.data.photos build --out root``).

    ``kinds`` chooses photos, video frames and composites; ``semseg_classes`` renames the
    semseg ids into another class list (e.g. one a model shares with the synthetic scenes):
    a photo class missing from it becomes 255."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        kinds: tuple[str, ...] = KINDS,
        semseg_classes: tuple[str, ...] = PHOTO_CLASSES,
    ) -> None:
        self.root = Path(root)
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        records = read_manifest(self.root)
        self.records: list[PhotoRecord] = [
            r for r in records if r.split == split and r.kind in kinds
        ]
        self.split, self.semseg_classes = split, semseg_classes
        self._class_map = class_map(semseg_classes)

    def __len__(self) -> int:
        return len(self.records)

    def labels(self, index: int) -> dict[str, np.ndarray]:
        """The stored maps of item ``index``: ``LABELS`` as written (semseg in
        ``PHOTO_CLASSES`` ids, saliency as round(255 p)) and the ``image``."""
        folder = item_dir(self.root, self.records[index].id)
        return {name: read_png(folder / f"{name}.png") for name in ("image", *LABELS)}

    def __getitem__(self, index: int) -> Sample:
        maps = self.labels(index)
        height, width = maps["image"].shape[:2]
        return Sample(
            image=maps["image"],
            semseg=self._class_map[maps["semseg"]],
            parts=maps["parts"],
            saliency=(maps["saliency"] >= SALIENT).astype(np.uint8),
            normals=np.zeros((height, width, 3), np.float32),  # no teacher: never labelled
            normals_valid=np.zeros((height, width), bool),
            edges=maps["edges"],
            name=self.records[index].id,
        )
