"""A small PASCAL_MT tree in the archive's exact formats, images of different sizes, labels
drawn at random; and the references' reading of its ground truth, transcribed independently
of ``model/data/pascal.py`` (the reference loaders' rules, numbers from their code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

FOLDERS = (
    "JPEGImages",
    "ImageSets/Context",
    "semseg/VOC12",
    "human_parts",
    "pascal-context/trainval",
    "normals_distill",
    "sal_distill",
)
PART_DTYPE = [("part_name", "O"), ("mask", "O")]
OBJECT_DTYPE = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
NYU_SOME, OTHER_SOME = (3, 4, 6, 9, 457), (1, 2, 5, 7, 458)  # in / not in the valid 170
PART_NAMES = ("head", "torso", "luarm", "llarm", "ruleg", "rlleg")  # classes 1..6 in order


def matlab_struct(dtype, rows: list[dict]) -> np.ndarray:
    """A 1xN MATLAB struct array (0x0 when empty), as PASCAL-Part stores it."""
    array = np.zeros((1, len(rows)) if rows else (0, 0), dtype=dtype)
    for i, row in enumerate(rows):
        for key, value in row.items():
            array[0, i][key] = value
    return array


def _blocks(rng: np.random.Generator, shape: tuple[int, int], values, block: int) -> np.ndarray:
    """Random values from ``values`` in ``block``-pixel squares."""
    coarse = rng.choice(np.asarray(values), size=(-(-shape[0] // block), -(-shape[1] // block)))
    return np.kron(coarse, np.ones((block, block), dtype=coarse.dtype))[: shape[0], : shape[1]]


def _write_parts(path: Path, shape, rng: np.random.Generator, person: bool) -> None:
    objects = []
    if person:
        parts = _blocks(rng, shape, range(7), 3)
        rows = [
            {"part_name": name, "mask": (parts == i + 1).astype(np.uint8)}
            for i, name in enumerate(PART_NAMES)
        ]
        mask = (parts > 0).astype(np.uint8)
        objects.append(
            {
                "class": "person",
                "class_ind": 15,
                "mask": mask,
                "parts": matlab_struct(PART_DTYPE, rows),
            }
        )
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0]["imname"] = path.stem
    anno[0, 0]["objects"] = matlab_struct(OBJECT_DTYPE, objects)
    if not person:  # no object at all: the loader sizes its ignore map from the image
        anno[0, 0]["objects"] = np.zeros((0, 0), dtype=OBJECT_DTYPE)
    scipy.io.savemat(path, {"anno": anno})


def write_image(root: Path, image_id: str, shape, rng, person: bool, salient: bool) -> None:
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg")
    semseg = _blocks(rng, shape, range(21), 3).astype(np.uint8)
    semseg[rng.random(shape) < 0.05] = 255
    Image.fromarray(semseg).save(root / "semseg" / "VOC12" / f"{image_id}.png")
    _write_parts(root / "human_parts" / f"{image_id}.mat", shape, rng, person)
    label_map = _blocks(rng, shape, NYU_SOME + OTHER_SOME, 2).astype(np.uint16)
    scipy.io.savemat(root / "pascal-context/trainval" / f"{image_id}.mat", {"LabelMap": label_map})
    normals = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    Image.fromarray(normals).save(root / "normals_distill" / f"{image_id}.png")
    saliency = _blocks(rng, shape, [0, 200] if salient else [0, 90], 4).astype(np.uint8)
    Image.fromarray(saliency).save(root / "sal_distill" / f"{image_id}.png")


IMAGES = {  # id -> (height, width), has a person, has salient pixels
    "2008_000001": ((20, 28), True, True),
    "2008_000002": ((24, 18), False, False),  # empty saliency: MTI-Net IoU 1 if nothing predicted
    "2008_000003": ((21, 33), True, True),
}


def write_tree(root: Path, seed: int = 0) -> Path:
    """Train and val both list every image (the baselines fit on train)."""
    rng = np.random.default_rng(seed)
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = "\n".join(IMAGES) + "\n"
    for split in ("train", "val"):
        (root / "ImageSets/Context" / f"{split}.txt").write_text(ids)
    for image_id, (shape, person, salient) in IMAGES.items():
        write_image(root, image_id, shape, rng, person, salient)
    return root


def reference_normals(root: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) normals and (H, W) validity as the reference loaders make them: decoded, kept
    on the LabelMap classes of their normals_valid_classes, zero elsewhere; valid = norm > 0."""
    from tests.model.test_data_pascal import REFERENCE_NYU_CLASSES

    valid_classes = {int(v) for v in REFERENCE_NYU_CLASSES.split()}
    stored = np.asarray(Image.open(root / "normals_distill" / f"{image_id}.png"), np.float64)
    label_map = scipy.io.loadmat(root / "pascal-context/trainval" / f"{image_id}.mat")["LabelMap"]
    normals = np.zeros(stored.shape)
    for x in np.unique(label_map):
        if int(x) in valid_classes:
            normals[label_map == x] = 2.0 * stored[label_map == x] / 255.0 - 1.0
    return normals, np.linalg.norm(normals, axis=2) != 0


def reference_semseg(root: Path, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(root / "semseg" / "VOC12" / f"{image_id}.png"))


def reference_saliency(root: Path, image_id: str) -> np.ndarray:
    return (np.asarray(Image.open(root / "sal_distill" / f"{image_id}.png")) / 255.0 > 0.5).astype(
        np.uint8
    )
