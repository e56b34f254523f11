"""PhotoSet on a tree written here by hand: the stored values become a Sample's."""

import numpy as np
import pytest

from model.data.photos import PhotoSet, labelled_tasks
from model.data.photos.tree import PhotoRecord, item_dir, write_manifest, write_png
from model.tasks import IGNORE_INDEX, PHOTO_CLASSES


def write_item(root, item_id, split, kind="photo"):
    folder = item_dir(root, item_id)
    write_png(folder / "image.png", np.full((4, 6, 3), 99, np.uint8))
    write_png(folder / "saliency.png", np.array([[0, 127, 128, 255, 10, 200]] * 4, np.uint8))
    write_png(folder / "edges.png", np.eye(4, 6, dtype=np.uint8))
    write_png(folder / "semseg.png", np.array([[0, 1, 2, 3, 4, 255]] * 4, np.uint8))
    write_png(folder / "parts.png", np.full((4, 6), IGNORE_INDEX, np.uint8))
    write_png(folder / "person.png", np.array([[0, 1, 0, 0, 0, 255]] * 4, np.uint8))
    return PhotoRecord(
        item_id,
        kind,
        "scikit-image",
        "0",
        "m",
        "CC0-1.0",
        "a",
        "0",
        [6, 4],
        [6, 4],
        item_id,
        "all",
        "background",
        split,
    )


@pytest.fixture
def root(tmp_path):
    records = [
        write_item(tmp_path, "a", "train"),
        write_item(tmp_path, "b", "val"),
        write_item(tmp_path, "c", "train", "composite"),
    ]
    write_manifest(tmp_path, records)
    return tmp_path


def test_stored_maps_become_a_samples_labels(root):
    sample = PhotoSet(root, "val")[0]
    assert sample.name == "b" and sample.image.shape == (4, 6, 3)
    assert sample.saliency[0].tolist() == [0, 0, 1, 1, 0, 1]  # p > 0.5 <=> stored >= 128
    assert sample.semseg[0].tolist() == [0, 1, 2, 3, 4, 255]
    assert not sample.normals_valid.any() and sample.normals.shape == (4, 6, 3)
    assert labelled_tasks(sample) == ("semseg", "saliency", "edges")


def test_splits_kinds_and_class_lists(root):
    assert [r.id for r in PhotoSet(root, "train").records] == ["a", "c"]
    assert [r.id for r in PhotoSet(root, "train", kinds=("photo",)).records] == ["a"]
    with pytest.raises(ValueError, match="unknown kinds"):
        PhotoSet(root, "train", kinds=("video",))
    merged = ("background", "person", "sphere", "box", "food")
    renamed = PhotoSet(root, "val", semseg_classes=merged)[0].semseg[0].tolist()
    assert renamed == [0, 1, 255, 255, 4, 255]
    assert PHOTO_CLASSES[4] == "food"


def test_a_missing_set_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no photo set"):
        PhotoSet(tmp_path / "nowhere")


def test_the_trainers_dataset_takes_a_photo_set(root):
    from model.data.transforms import MultiTaskDataset, TrainTransform, collate
    from model.tasks import TASK_NAMES

    dataset = MultiTaskDataset(PhotoSet(root, "train"), TrainTransform(8), TASK_NAMES)
    images, targets = collate([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 8, 8)
    assert (targets["normals"] == 255).all() and not targets["normals_valid"].any()
    assert set(targets["saliency"].unique().tolist()) <= {0.0, 1.0, 255.0}
