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
  - edges: the support of the 4-neighbour Laplacian of ``LabelMap`` (replicated border) is a
    2 px band around each boundary; it is thinned to 1 px by keeping only its pixels whose right
    or lower neighbour carries another label (an axis-aligned stand-in for morphological
    thinning). Values {0, 1}, never ignored.
  - normals: decoded exactly by the formula (not renormalised; a metric normalises anyway);
    pixels whose three channels are all 255 are invalid (``normals_valid`` False, vector 0).
  - saliency: {0, 1}, never ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat

from model.data.labels import label_boundaries, laplacian_support
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
        for folder in ("JPEGImages", "human_parts", "pascal-context/trainval",
                       "normals_distill", "sal_distill"):  # fmt: skip
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
        normals, normals_valid = load_normals(self.path("normals_distill", image_id, ".png"))
        labels = {
            "semseg": load_semseg(self.semseg_path(image_id)),
            "parts": load_parts(self.path("human_parts", image_id, ".mat")),
            "saliency": load_saliency(self.path("sal_distill", image_id, ".png")),
            "edges": load_edges(self.path("pascal-context/trainval", image_id, ".mat")),
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


def load_normals(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """((H, W, 3) float32 n = 2 v / 255 - 1, zero where invalid; (H, W) bool validity)."""
    values = _read_png(path)[..., :3]
    valid = ~(values == 255).all(axis=2)
    normals = 2.0 * values.astype(np.float32) / 255.0 - 1.0
    normals[~valid] = 0.0
    return normals, valid


def load_edges(path: Path) -> np.ndarray:
    """(H, W) uint8 {0, 1}: the thinned boundaries of the ``LabelMap`` (module docstring)."""
    label_map = loadmat(_require(path))["LabelMap"]
    edges = laplacian_support(label_map) & label_boundaries(label_map)
    return edges.astype(np.uint8)


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
