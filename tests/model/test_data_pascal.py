"""The PASCAL_MT loader on a tiny tree written in the archive's exact formats."""

import shutil

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
import skimage.morphology
from PIL import Image

from model.data import PascalContext
from model.data.pascal import NORMALS_VALID_CLASSES, PART_NAME_TO_CLASS, label_map_edges
from model.data.transforms import horizontal_flip
from model.tasks import IGNORE_INDEX, PARTS_CLASSES
from tests.model.pascal_tree import matlab_struct

H, W = 12, 16
NYU_CLASS, OTHER_CLASS = 4, 300  # in / not in the references' normals_valid_classes
PART_DTYPE = [("part_name", "O"), ("mask", "O")]
FOLDERS = (
    "JPEGImages",
    "ImageSets/Context",
    "semseg/VOC12",
    "semseg/pascal-context",
    "human_parts",
    "pascal-context/trainval",
    "normals_distill",
    "sal_distill",
)
OBJECT_DTYPE = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]


def reference_edges(label_map: np.ndarray) -> np.ndarray:
    """The reference loaders' edges, transcribed: ``cv2.Laplacian(LabelMap, cv2.CV_64F)``
    (ksize 1: the 4-neighbour kernel; border reflect-101 = scipy's ``mirror``), then
    ``skimage.morphology.thin(abs(lap) > 0)``."""
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    laplacian = scipy.ndimage.convolve(label_map.astype(np.float64), kernel, mode="mirror")
    return skimage.morphology.thin(np.abs(laplacian) > 0).astype(np.uint8)


def _box(top, bottom, left, right) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def _write_parts(path, objects):
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0]["imname"] = path.stem
    anno[0, 0]["objects"] = matlab_struct(OBJECT_DTYPE, objects)
    scipy.io.savemat(path, {"anno": anno})


PERSON_PARTS = [
    ("hair", _box(0, 2, 2, 6)),
    ("luarm", _box(4, 6, 2, 4)),
    ("rfoot", _box(9, 11, 2, 6)),
]


def _write_image(root, image_id, semseg_folder, person: bool):
    rng = np.random.default_rng(len(image_id))
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
        root / "JPEGImages" / f"{image_id}.jpg"
    )
    semseg = np.zeros((H, W), dtype=np.uint8)
    semseg[:, : W // 2] = 15 if semseg_folder == "VOC12" else 7
    semseg[0, 0] = 255
    Image.fromarray(semseg).save(root / "semseg" / semseg_folder / f"{image_id}.png")
    dog = {
        "class": "dog",
        "class_ind": 12,
        "mask": _box(0, H, 8, 16),
        "parts": matlab_struct(PART_DTYPE, []),
    }
    person_obj = {
        "class": "person",
        "class_ind": 15,
        "mask": _box(0, H, 0, 8),
        "parts": matlab_struct(PART_DTYPE, [{"part_name": n, "mask": m} for n, m in PERSON_PARTS]),
    }
    _write_parts(root / "human_parts" / f"{image_id}.mat", [person_obj, dog] if person else [dog])
    label_map = np.full((H, W), NYU_CLASS, dtype=np.uint16)
    label_map[:, W // 2 :] = OTHER_CLASS  # one vertical boundary between columns W/2-1 and W/2
    scipy.io.savemat(
        root / "pascal-context" / "trainval" / f"{image_id}.mat", {"LabelMap": label_map}
    )
    normals = np.full((H, W, 3), 128, dtype=np.uint8)
    normals[..., 0] = 255  # x = +1
    normals[0, 1] = 255  # no special meaning: (1, 1, 1) on a valid class
    Image.fromarray(normals).save(root / "normals_distill" / f"{image_id}.png")
    saliency = np.zeros((H, W), dtype=np.uint8)
    saliency[:, :4], saliency[:, 4:6] = 128, 127  # 128/255 > 0.5 > 127/255
    Image.fromarray(saliency).save(root / "sal_distill" / f"{image_id}.png")


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "PASCAL_MT"
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True)
    (root / "ImageSets/Context/train.txt").write_text("2008_000001\n")
    (root / "ImageSets/Context/val.txt").write_text("2008_000002\n2008_000003\n")
    _write_image(root, "2008_000001", "VOC12", person=True)
    _write_image(root, "2008_000002", "pascal-context", person=False)  # fallback, no person
    _write_image(root, "2008_000003", "VOC12", person=True)
    return root


def test_reads_every_task_in_the_archive_formats(tree):
    dataset = PascalContext(tree, "train")
    assert len(dataset) == 1
    sample = dataset[0]
    assert sample.name == "2008_000001" and sample.image.shape == (H, W, 3)
    assert sample.semseg[5, 0] == 15 and sample.semseg[0, 0] == IGNORE_INDEX
    # parts: names grouped into the 7 classes, pixels outside parts 0
    assert sample.parts[0, 3] == PARTS_CLASSES.index("head")
    assert sample.parts[5, 2] == PARTS_CLASSES.index("upper_arm")
    assert sample.parts[10, 3] == PARTS_CLASSES.index("lower_leg")
    assert sample.parts[7, 10] == 0 and sample.has_person
    # edges: the one label boundary (a 2 px Laplacian band), thinned to 1 px by skimage
    label_map = scipy.io.loadmat(tree / "pascal-context/trainval/2008_000001.mat")["LabelMap"]
    np.testing.assert_array_equal(sample.edges, reference_edges(label_map))
    assert sample.edges[1:-1].sum(axis=1).tolist() == [1] * (H - 2)
    # normals: n = 2 v / 255 - 1 on the NYU-compatible class (left half) only
    np.testing.assert_array_equal(sample.normals_valid, label_map == NYU_CLASS)
    np.testing.assert_allclose(
        sample.normals[5, 5], [1.0, 2 * 128 / 255 - 1, 2 * 128 / 255 - 1], atol=1e-6
    )
    np.testing.assert_array_equal(sample.normals[0, 1], 1.0)
    np.testing.assert_array_equal(sample.normals[:, W // 2 :], 0.0)
    # saliency: v / 255 > 0.5
    assert (sample.saliency[:, :4] == 1).all() and (sample.saliency[:, 4:] == 0).all()


def test_semseg_falls_back_to_pascal_context_and_no_person_is_all_ignored(tree):
    dataset = PascalContext(tree, "val")
    fallback, voc = dataset[0], dataset[1]
    assert fallback.semseg[5, 0] == 7 and voc.semseg[5, 0] == 15
    assert (fallback.parts == IGNORE_INDEX).all() and not fallback.has_person
    assert voc.has_person


def test_flip_negates_normals_x_and_mirrors_labels(tree):
    sample = PascalContext(tree, "train")[0]
    flipped = horizontal_flip(sample)
    np.testing.assert_array_equal(flipped.semseg, sample.semseg[:, ::-1])
    np.testing.assert_array_equal(flipped.normals_valid, sample.normals_valid[:, ::-1])
    np.testing.assert_allclose(flipped.normals[5, W - 1 - 5, 0], -sample.normals[5, 5, 0])
    np.testing.assert_allclose(flipped.normals[..., 1:], sample.normals[:, ::-1, 1:])
    assert (flipped.normals[~flipped.normals_valid] == 0).all()


def test_every_part_name_maps_to_a_real_part_class():
    assert set(PART_NAME_TO_CLASS.values()) == set(range(1, len(PARTS_CLASSES)))


def test_missing_root_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PascalContext(missing)


def test_missing_folder_and_missing_file_are_named(tree):
    (tree / "normals_distill" / "2008_000003.png").unlink()
    dataset = PascalContext(tree, "val")
    with pytest.raises(FileNotFoundError, match=r"normals_distill.2008_000003\.png"):
        dataset[1]
    shutil.rmtree(tree / "sal_distill")
    with pytest.raises(FileNotFoundError, match="sal_distill"):
        PascalContext(tree, "val")
    (tree / "ImageSets" / "Context" / "train.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"ImageSets.Context.train\.txt"):
        PascalContext(tree, "train")
    with pytest.raises(ValueError, match="split"):
        PascalContext(tree, "test")


def test_unknown_part_name_is_an_error(tree):
    tail = matlab_struct(PART_DTYPE, [{"part_name": "tail", "mask": _box(0, 2, 0, 2)}])
    person = {"class": "person", "class_ind": 15, "mask": _box(0, H, 0, 8), "parts": tail}
    _write_parts(tree / "human_parts" / "2008_000001.mat", [person])
    with pytest.raises(ValueError, match="tail"):
        PascalContext(tree, "train")[0]


# The references' list, copied from their loaders' normals_valid_classes (as LabelMap ids).
REFERENCE_NYU_CLASSES = """
3 4 6 9 10 11 13 15 17 18 22 23 29 30 33 34 36 37 38 39 41 43 46 49 50 51 53 55 56 59 61 62 65
66 68 69 72 73 78 83 84 85 87 88 95 96 101 104 105 107 111 113 115 122 124 135 141 142 143 146
150 154 157 158 159 165 172 174 181 183 184 191 193 195 197 199 202 213 215 216 219 220 223 225
228 230 232 233 238 239 242 243 246 250 251 252 255 260 261 263 269 272 273 275 281 283 284 285
286 287 288 290 291 292 293 295 304 307 309 310 314 315 319 323 329 330 331 336 342 345 349 350
351 352 355 357 368 370 371 374 379 380 383 384 397 401 403 405 407 408 411 412 413 414 417 419
421 423 427 429 430 432 440 441 442 443 444 446 454 457
"""


def test_normals_valid_classes_are_the_references_170():
    assert {int(v) for v in REFERENCE_NYU_CLASSES.split()} == NORMALS_VALID_CLASSES
    assert len(NORMALS_VALID_CLASSES) == 170


def _random_label_map(rng: np.random.Generator) -> np.ndarray:
    """Blobs of a few classes (upsampled noise), some single-pixel specks, random size."""
    height, width = (int(v) for v in rng.integers(3, 48, size=2))
    coarse = rng.integers(1, 460, size=(max(height // 4, 1), max(width // 4, 1)))
    labels = np.kron(coarse, np.ones((4, 4), dtype=np.int64))[:height, :width]
    labels = np.pad(
        labels, ((0, height - labels.shape[0]), (0, width - labels.shape[1])), mode="edge"
    )
    specks = rng.random((height, width)) < 0.03
    labels[specks] = rng.integers(1, 460, size=int(specks.sum()))
    return labels.astype(np.uint16)


def test_edges_equal_the_reference_on_many_random_label_maps():
    rng = np.random.default_rng(15)
    for _ in range(300):
        label_map = _random_label_map(rng)
        np.testing.assert_array_equal(label_map_edges(label_map), reference_edges(label_map))


def test_normals_on_a_random_label_map_keep_only_nyu_classes(tree):
    rng = np.random.default_rng(4)
    label_map = rng.choice([NYU_CLASS, OTHER_CLASS, 3, 5, 457, 458], size=(H, W)).astype(np.uint16)
    scipy.io.savemat(tree / "pascal-context/trainval/2008_000001.mat", {"LabelMap": label_map})
    stored = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(stored).save(tree / "normals_distill" / "2008_000001.png")
    sample = PascalContext(tree, "train")[0]
    # The references: zeros, then for each class x of the map in the valid set, the decoded
    # normals on its pixels.
    expected = np.zeros((H, W, 3))
    for x in np.unique(label_map):
        if int(x) in {int(v) for v in REFERENCE_NYU_CLASSES.split()}:
            expected[label_map == x] = 2.0 * stored[label_map == x] / 255.0 - 1.0
    np.testing.assert_allclose(sample.normals, expected, atol=1e-6)
    np.testing.assert_array_equal(sample.normals_valid, np.isin(label_map, [NYU_CLASS, 3, 457]))
    np.testing.assert_array_equal(sample.edges, reference_edges(label_map))
