"""The task registry: the one place that names tasks, their channels, classes, palettes and
loss weights. Training, export, the server's metadata and the tests all read it.

A task's *kind* says what its map means:
  - ``classes``: per-pixel class ids (``semseg``, ``parts``), trained with cross-entropy;
  - ``probability``: one channel in [0, 1] (``saliency``, ``edges``), trained with balanced BCE;
  - ``vector``: unit surface normals, 3 channels in [-1, 1] (``normals``), trained with L1.

Class lists depend on the dataset (PASCAL-Context's 21 VOC classes, or the project's
synthetic scenes), so they live in a ``DatasetSpec``; the tasks themselves do not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IGNORE_INDEX = 255
"""Label value that every loss and metric skips (PASCAL convention)."""

TaskKind = Literal["classes", "probability", "vector"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: TaskKind
    loss_weight: float  # the PASCAL-Context multi-task benchmark's standard weights
    description: str


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("semseg", "classes", 1.0, "semantic segmentation"),
        TaskSpec("parts", "classes", 2.0, "human parts (persons only)"),
        TaskSpec("saliency", "probability", 5.0, "salient objects"),
        TaskSpec("normals", "vector", 10.0, "surface normals"),
        TaskSpec("edges", "probability", 50.0, "object boundaries"),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
"""Canonical order; a task's id in a graph or a batch is its index here."""

PARTS_CLASSES = ("background", "head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg")


def hex_palette(colours: str) -> tuple[tuple[int, int, int], ...]:
    """``"000000 e6194b ..."`` -> ((0, 0, 0), (230, 25, 75), ...): one class's colour each."""
    return tuple(tuple(bytes.fromhex(colour)) for colour in colours.split())


PARTS_PALETTE = hex_palette("000000 e6194b 3cb44b ffe119 0082c8 f58230 911eb4")

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip  # class names by id, ten a row

SYNTHETIC_CLASSES = ("background", "person", "sphere", "box", "cylinder", "cone")
SYNTHETIC_PALETTE = hex_palette("000000 dc143c 0080ff ffaa00 28c878 aa50ff")

PHOTO_CLASSES = ("background", "person", "animal", "vehicle", "food")
"""The real-photo set's semseg classes (``model/data/photos``): people from the person
teachers, the rest from what a source names (the catalogue, Tux Paint's stamp folders)."""
PHOTO_PALETTE = hex_palette("000000 dc143c f58230 0082c8 3cb44b")


def voc_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map: class id bits spread over the high bits of R, G and B."""
    colours = []
    for class_id in range(num_classes):
        r = g = b = 0
        bits = class_id
        for shift in range(7, -1, -1):
            r |= (bits & 1) << shift
            g |= ((bits >> 1) & 1) << shift
            b |= ((bits >> 2) & 1) << shift
            bits >>= 3
        colours.append((r, g, b))
    return tuple(colours)


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset's labels mean: the class lists and palettes of the ``classes`` tasks."""

    name: str
    semseg_classes: tuple[str, ...]
    semseg_palette: tuple[tuple[int, int, int], ...]
    parts_classes: tuple[str, ...] = PARTS_CLASSES
    parts_palette: tuple[tuple[int, int, int], ...] = PARTS_PALETTE

    def __post_init__(self) -> None:
        if len(self.semseg_classes) != len(self.semseg_palette):
            raise ValueError(f"dataset {self.name!r}: semseg classes and palette differ in length")
        if len(self.parts_classes) != len(self.parts_palette):
            raise ValueError(f"dataset {self.name!r}: parts classes and palette differ in length")

    def classes(self, task: str) -> tuple[str, ...] | None:
        """Class names of a ``classes`` task, ``None`` for the others."""
        return {"semseg": self.semseg_classes, "parts": self.parts_classes}.get(
            require_task(task).name
        )

    def palette(self, task: str) -> tuple[tuple[int, int, int], ...] | None:
        return {"semseg": self.semseg_palette, "parts": self.parts_palette}.get(
            require_task(task).name
        )

    def channels(self, task: str) -> int:
        """Output channels of the task's head."""
        spec = require_task(task)
        if spec.kind == "classes":
            return len(self.classes(task))
        return 3 if spec.kind == "vector" else 1

    def describe(self, tasks: tuple[str, ...] = TASK_NAMES) -> dict:
        """A JSON-ready snapshot: stored in checkpoints and in the exported metadata."""
        return {
            "dataset": self.name,
            "tasks": [
                {
                    "name": name,
                    "id": TASK_NAMES.index(name),
                    "kind": TASKS[name].kind,
                    "channels": self.channels(name),
                    "loss_weight": TASKS[name].loss_weight,
                    "classes": list(self.classes(name) or []) or None,
                    "palette": [list(c) for c in self.palette(name) or []] or None,
                }
                for name in tasks
            ],
        }


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("pascal_context", VOC_CLASSES, voc_palette(len(VOC_CLASSES))),
        DatasetSpec("synthetic", SYNTHETIC_CLASSES, SYNTHETIC_PALETTE),
        DatasetSpec("photos", PHOTO_CLASSES, PHOTO_PALETTE),
    )
}


def require_task(name: str) -> TaskSpec:
    """The task's spec, or a ``ValueError`` that lists the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}") from None


def require_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}") from None
