"""A small photo set written by the tests in the layout of ``model/data/photos/tree.py``:
scikit-image's photos (a person, a cat, a cup) at a small camera-like size, with hand-made
teacher maps (soft saliency, HED probability, selfie probability) and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data

from model.data.photos.tree import PhotoRecord, item_dir, write_manifest, write_png
from model.presets import DataConfig
from model.tasks import IGNORE_INDEX, PHOTO_CLASSES, SCENES_AND_PHOTOS

PHOTOS = {  # id: (scikit-image photo, has a person, split)
    "astronaut": ("astronaut", True, "train"),
    "chelsea": ("chelsea", False, "train"),
    "coffee": ("coffee", False, "train"),
    "astronaut-val": ("astronaut", True, "val"),
    "chelsea-val": ("chelsea", False, "val"),
}
SIZE = (96, 128)  # (height, width): wider than tall, as camera photos


def box(size: tuple[int, int], top: float, left: float, bottom: float, right: float):
    """A bool mask of the box given in fractions of the height and width."""
    mask = np.zeros(size, bool)
    mask[int(top * size[0]) : int(bottom * size[0]), int(left * size[1]) : int(right * size[1])] = 1
    return mask


def probability_png(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 230, 20).astype(np.uint8)


def write_item(root: Path, item_id: str, photo: str, person: bool, split: str) -> PhotoRecord:
    folder = item_dir(root, item_id)
    image = Image.fromarray(getattr(data, photo)()).convert("RGB").resize(SIZE[::-1])
    write_png(folder / "image.png", np.asarray(image))
    subject = box(SIZE, 0.2, 0.3, 0.9, 0.7)
    write_png(folder / "saliency.png", probability_png(subject))
    outline = subject & ~ndimage.binary_erosion(subject)  # the box's 1-px border
    write_png(folder / "teacher_hed.png", probability_png(outline))
    write_png(folder / "edges.png", outline.astype(np.uint8))
    person_label = np.where(subject, 1, 0).astype(np.uint8) if person else np.zeros(SIZE, np.uint8)
    write_png(folder / "person.png", person_label)
    write_png(folder / "teacher_selfie.png", probability_png(person_label == 1))
    semseg = np.where(person_label == 1, PHOTO_CLASSES.index("person"), 0).astype(np.uint8)
    write_png(folder / "semseg.png", semseg)
    parts = np.full(SIZE, IGNORE_INDEX, np.uint8)
    if person:
        parts = np.where(subject, 2, 0).astype(np.uint8)  # all torso: enough for the tests
        parts[box(SIZE, 0.2, 0.3, 0.4, 0.7)] = 1  # a head on top
    write_png(folder / "parts.png", parts)
    people = "all" if person else "none"
    return PhotoRecord(
        item_id,
        "photo",
        "scikit-image",
        "0",
        photo,
        "CC0-1.0",
        "test",
        "0",
        [SIZE[1], SIZE[0]],
        [SIZE[1], SIZE[0]],
        item_id,
        people,
        "background",
        split,
    )


def write_photo_tree(root: Path) -> Path:
    records = [write_item(root, i, *spec) for i, spec in PHOTOS.items()]
    write_manifest(root, records)
    return root


def mixed_data(root: Path, val_size: int = 0) -> DataConfig:
    """The tests' mixed data: the tree at ``root``, two photos a batch, no augmentation."""
    return DataConfig(
        dataset=SCENES_AND_PHOTOS,
        root=str(root),
        val_size=val_size,
        augment="none",
        workers=0,
        photos_per_batch=2,
    )
