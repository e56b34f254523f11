"""PASCAL-Context multi-task benchmark (the PASCAL_MT archive layout) -> ``Sample``.

Layout under ``root`` (every path is checked, and a missing one is named in the error)::

    JPEGImages/<id>.jpg                    RGB image
    ImageSets/Context/{train,val}.txt      one id per line
    semseg/VOC12/<id>.png                  uint8 class ids 0..20, 255 ignore; when absent,
    semseg/pascal-context/<id>.png         the same format from PASCAL-Context
    human_parts/<id>.mat                   PASCAL-Part ``anno`` struct (see ``load_parts``)
    pascal-context/trainval/<id>.mat       ``LabelMap`` (459 classes): edges are its boundaries
    normals_distill/<id>.png               uint8 RGB, n = 2 v / 255 - 1; (255, 255, 255) invalid
    sal_distill/<id>.png                   uint8, salient where v / 255 > 0.5

Decoding choices, so nothing surprises a reader of the metrics:
  - parts: the masks of every person object (``class_ind`` 15) that carries part annotations,
    part names mapped to the 7 classes of ``PARTS_CLASSES`` (``PART_NAME_TO_CLASS``); pixels
    outside any part are 0; an image without such a person is all 255 (ignored), as the
    benchmark does. An unknown part name is an error, not a silent 0.
  - edges, as the reference loaders (Multi-Task-Learning-PyTorch, InvPT) make them: the
    4-neighbour Laplacian of ``LabelMap`` with OpenCV's default border (reflect-101, what
    ``cv2.Laplacian`` uses), then scikit-image's ``thin`` of its non-zero pixels. Values
    {0, 1}, never ignored.
  - normals, as the reference loaders keep them: decoded exactly by the formula (not
    renormalised; a metric normalises anyway) and valid only where the ``LabelMap`` class is
    one of ``NORMALS_VALID_CLASSES``; everywhere else ``normals_valid`` is False and the vector
    0. A stored value has no special meaning: (255, 255, 255) on a valid class is (1, 1, 1).
  - saliency: {0, 1}, never ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat
from skimage.morphology import thin

from model.data.labels import laplacian_support
from model.data.sample import Sample
from model.tasks import IGNORE_INDEX, PARTS_CLASSES, VOC_CLASSES

PERSON_CLASS = VOC_CLASSES.index("person")  # 15, PASCAL-Part's class_ind of a person
_PART_GROUPS = {
    "head": ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose"),
    "torso": ("torso", "neck"),
    "upper_arm": ("luarm", "ruarm"),
    "lower_arm": ("llarm", "rlarm", "lhand", "rhand"),
    "upper_leg": ("luleg", "ruleg"),
    "lower_leg": ("llleg", "rlleg", "lfoot", "rfoot"),
}
PART_NAME_TO_CLASS: dict[str, int] = {
    name: PARTS_CLASSES.index(group) for group, names in _PART_GROUPS.items() for name in names
}
"""PASCAL-Part person part name -> index in ``PARTS_CLASSES``."""

SPLITS = ("train", "val")

NORMALS_VALID_CLASSES = frozenset((
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49,
    50, 51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101,
    104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159,
    165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223,
    225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269,
    272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309,
    310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368,
    370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417,
    419, 421, 423, 427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457,
))  # fmt: skip  # class ids, rows as in the reference
"""``LabelMap`` values (1-based indices into the 459 PASCAL-Context classes) where the
benchmark's normals are valid: the classes whose names are NYU class names ('unknown'
excluded), plus 'tvmonitor'; e.g. person, chair, table, wall, floor, ceiling, window, sofa,
bed, cabinet; not sky, grass, tree, road, water. 170 classes."""


class PascalContext:
    """The ids of one split of a PASCAL_MT tree; item ``i`` is the ``Sample`` of the i-th id.

    The layout is checked at construction (root, split list, one folder per task); each
    item's files are read when the item is asked for, and a missing file is named.
    """

    def __init__(self, root: str | Path, split: str = "val") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"PASCAL-Context root not found: {self.root}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        self.split = split
        id_file = self.root / "ImageSets" / "Context" / f"{split}.txt"
        _require(id_file)
        for folder in (
            "JPEGImages",
            "human_parts",
            "pascal-context/trainval",
            "normals_distill",
            "sal_distill",
        ):
            _require(self.root / folder)
        if not (self.root / "semseg" / "VOC12").is_dir():
            _require(self.root / "semseg" / "pascal-context")
        self.ids = [line.strip() for line in id_file.read_text().splitlines() if line.strip()]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        image = np.asarray(Image.open(_require(self.path("JPEGImages", image_id, ".jpg"))))
        image = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        label_map = load_label_map(self.path("pascal-context/trainval", image_id, ".mat"))
        normals_path = self.path("normals_distill", image_id, ".png")
        normals, normals_valid = load_normals(normals_path, label_map)
        labels = {
            "semseg": load_semseg(self.semseg_path(image_id)),
            "parts": load_parts(self.path("human_parts", image_id, ".mat")),
            "saliency": load_saliency(self.path("sal_distill", image_id, ".png")),
            "edges": label_map_edges(label_map),
            "normals": normals,
        }
        for name, label in labels.items():
            if label.shape[:2] != image.shape[:2]:
                raise ValueError(
                    f"{image_id}: {name} is {label.shape[:2]} but the image is {image.shape[:2]}"
                )
        return Sample(
            image=image[..., :3].astype(np.uint8),
            normals_valid=normals_valid,
            name=image_id,
            **labels,
        )

    def path(self, folder: str, image_id: str, suffix: str) -> Path:
        return self.root / folder / f"{image_id}{suffix}"

    def semseg_path(self, image_id: str) -> Path:
        """``semseg/VOC12/<id>.png``, else ``semseg/pascal-context/<id>.png``."""
        voc = self.path("semseg/VOC12", image_id, ".png")
        return voc if voc.is_file() else self.path("semseg/pascal-context", image_id, ".png")


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"PASCAL-Context layout: missing {path}")
    return path


def _read_png(path: Path) -> np.ndarray:
    """Raw stored values (a palette PNG gives its indices, not colours)."""
    return np.asarray(Image.open(_require(path)))


def load_semseg(path: Path) -> np.ndarray:
    """(H, W) uint8 class ids, 255 ignore."""
    labels = _read_png(path)
    return (labels if labels.ndim == 2 else labels[..., 0]).astype(np.uint8)


def load_saliency(path: Path) -> np.ndarray:
    """(H, W) uint8 {0, 1}: 1 where the stored value / 255 > 0.5."""
    values = _read_png(path)
    values = values if values.ndim == 2 else values[..., 0]
    return (values.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)


def load_label_map(path: Path) -> np.ndarray:
    """(H, W) ``LabelMap`` of PASCAL-Context: 1-based ids of its 459 classes."""
    return np.asarray(loadmat(_require(path))["LabelMap"])


def load_normals(path: Path, label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((H, W, 3) float32 n = 2 v / 255 - 1, zero where invalid; (H, W) bool validity: the
    pixels whose ``label_map`` class is in ``NORMALS_VALID_CLASSES``)."""
    values = _read_png(path)[..., :3]
    if values.shape[:2] != label_map.shape:
        raise ValueError(f"{path}: {values.shape[:2]} but its LabelMap is {label_map.shape}")
    valid = np.isin(label_map, np.fromiter(NORMALS_VALID_CLASSES, dtype=np.int64))
    normals = 2.0 * values.astype(np.float32) / 255.0 - 1.0
    normals[~valid] = 0.0
    return normals, valid


def label_map_edges(label_map: np.ndarray) -> np.ndarray:
    """(H, W) uint8 {0, 1}: ``thin`` of where the reflect-101 Laplacian is non-zero."""
    return thin(laplacian_support(label_map)).astype(np.uint8)


def load_parts(path: Path) -> np.ndarray:
    """(H, W) uint8 ``PARTS_CLASSES`` ids; all 255 when no person has part annotations.

    ``scipy.io.loadmat`` layout of PASCAL-Part: ``anno`` is a 1x1 struct with ``imname`` and
    ``objects``, a 1xN struct array with ``class`` (name), ``class_ind`` (VOC id, 15 = person),
    ``mask`` (H, W) and ``parts``, a 1xM struct array (possibly empty) with ``part_name`` and
    ``mask``.
    """
    anno = loadmat(_require(path))["anno"][0, 0]
    objects = anno["objects"].ravel() if anno["objects"].size else []
    labels = None
    for obj in objects:
        parts = obj["parts"].ravel() if obj["parts"].size else []
        if int(np.asarray(obj["class_ind"]).ravel()[0]) != PERSON_CLASS or not len(parts):
            continue
        if labels is None:
            labels = np.zeros(obj["mask"].shape, dtype=np.uint8)
        for part in parts:
            name = str(np.asarray(part["part_name"]).ravel()[0])
            if name not in PART_NAME_TO_CLASS:
                raise ValueError(f"{path}: unknown person part name {name!r}")
            labels[np.asarray(part["mask"]).astype(bool)] = PART_NAME_TO_CLASS[name]
    if labels is None:
        shape = _any_mask_shape(objects) or _image_shape_from(path)
        return np.full(shape, IGNORE_INDEX, dtype=np.uint8)
    return labels


def _any_mask_shape(objects) -> tuple[int, int] | None:
    for obj in objects:
        if obj["mask"].ndim == 2 and obj["mask"].size:
            return obj["mask"].shape
    return None


def _image_shape_from(parts_path: Path) -> tuple[int, int]:
    """An annotation without objects has no mask to size the ignore map: use the image's."""
    image_path = parts_path.parent.parent / "JPEGImages" / f"{parts_path.stem}.jpg"
    with Image.open(_require(image_path)) as image:
        return image.height, image.width
