"""The PASCAL_MT loader on a tiny tree written in the archive's exact formats."""

import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from model.data import PascalContext
from model.data.pascal import PART_NAME_TO_CLASS
from model.data.transforms import horizontal_flip
from model.tasks import IGNORE_INDEX, PARTS_CLASSES

H, W = 12, 16
PART_DTYPE = [("part_name", "O"), ("mask", "O")]
FOLDERS = ("JPEGImages", "ImageSets/Context", "semseg/VOC12", "semseg/pascal-context",
           "human_parts", "pascal-context/trainval", "normals_distill", "sal_distill")  # fmt: skip
OBJECT_DTYPE = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]


def _struct(dtype, rows: list[dict]) -> np.ndarray:
    """A 1xN MATLAB struct array (0x0 when empty), as PASCAL-Part stores it."""
    array = np.zeros((1, len(rows)) if rows else (0, 0), dtype=dtype)
    for i, row in enumerate(rows):
        for key, value in row.items():
            array[0, i][key] = value
    return array


def _box(top, bottom, left, right) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def _write_parts(path, objects):
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0]["imname"] = path.stem
    anno[0, 0]["objects"] = _struct(OBJECT_DTYPE, objects)
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
        "parts": _struct(PART_DTYPE, []),
    }
    person_obj = {
        "class": "person", "class_ind": 15, "mask": _box(0, H, 0, 8),
        "parts": _struct(PART_DTYPE, [{"part_name": n, "mask": m} for n, m in PERSON_PARTS]),
    }  # fmt: skip
    _write_parts(root / "human_parts" / f"{image_id}.mat", [person_obj, dog] if person else [dog])
    label_map = np.full((H, W), 5, dtype=np.uint16)
    label_map[:, W // 2 :] = 300  # one vertical boundary between columns W/2-1 and W/2
    scipy.io.savemat(
        root / "pascal-context" / "trainval" / f"{image_id}.mat", {"LabelMap": label_map}
    )
    normals = np.full((H, W, 3), 128, dtype=np.uint8)
    normals[..., 0] = 255  # x = +1
    normals[0, 1] = 255  # invalid: all channels 255
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
    # edges: the one label boundary, thinned to the column left of it
    expected_edges = np.zeros((H, W), dtype=np.uint8)
    expected_edges[:, W // 2 - 1] = 1
    np.testing.assert_array_equal(sample.edges, expected_edges)
    # normals: n = 2 v / 255 - 1, all-255 pixels invalid
    assert not sample.normals_valid[0, 1] and sample.normals_valid.sum() == H * W - 1
    np.testing.assert_allclose(
        sample.normals[5, 5], [1.0, 2 * 128 / 255 - 1, 2 * 128 / 255 - 1], atol=1e-6
    )
    np.testing.assert_array_equal(sample.normals[0, 1], 0.0)
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
    tail = _struct(PART_DTYPE, [{"part_name": "tail", "mask": _box(0, 2, 0, 2)}])
    person = {"class": "person", "class_ind": 15, "mask": _box(0, H, 0, 8), "parts": tail}
    _write_parts(tree / "human_parts" / "2008_000001.mat", [person])
    with pytest.raises(ValueError, match="tail"):
        PascalContext(tree, "train")[0]
