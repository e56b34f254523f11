"""A small tree written here (two people photos, a blank image, a composite of test stamps,
at small sizes), labelled by the real teachers, then read back as the trainer will read it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from model.data.photos import PhotoSet, labelled_tasks
from model.data.photos.agreement import agreement
from model.data.photos.build import relabel_set
from model.data.photos.composites import Stamp, make_composites
from model.data.photos.labelling import label_all
from model.data.photos.sheet import contact_sheet
from model.data.photos.tree import (
    BUILD,
    LABELS,
    PhotoRecord,
    item_dir,
    read_png,
    write_manifest,
    write_png,
)
from model.tasks import IGNORE_INDEX, PHOTO_CLASSES, PHOTO_PALETTE


def photo(root, item_id, image, split, people, licence="CC0-1.0") -> PhotoRecord:
    write_png(item_dir(root, item_id) / "image.png", image)
    size = [image.shape[1], image.shape[0]]
    return PhotoRecord(
        item_id,
        "photo",
        "scikit-image",
        "0",
        item_id,
        licence,
        "test",
        "0",
        size,
        size,
        item_id,
        people,
        "background",
        split,
    )


def small(image: np.ndarray, side: int = 256) -> np.ndarray:
    image = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def tree(teachers, tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    disc = np.zeros((60, 60, 4), np.uint8)
    rows, cols = np.mgrid[:60, :60]
    disc[(rows - 30) ** 2 + (cols - 30) ** 2 < 28**2] = (20, 20, 200, 255)
    Image.fromarray(disc).save(root / "disc.png")
    records = [
        photo(root, "astronaut", small(data.astronaut()), "val", "all", "public domain (NASA)"),
        photo(root, "camera", small(data.camera()), "train", "all"),
        photo(root, "blank", np.full((96, 128, 3), 150, np.uint8), "train", "none"),
    ]
    stamps = [Stamp("vehicles/disc.png", root / "disc.png", "vehicle", "train")]
    records += make_composites(records, stamps, root)
    assert label_all(teachers, records, root, lambda line: None) == len(records)
    write_manifest(root, records)
    return root, records


def test_every_label_is_written_and_read_back_as_samples(tree):
    root, records = tree
    assert label_all(None, records, root, print) == 0  # all labelled: nothing runs
    train, val = PhotoSet(root, "train"), PhotoSet(root, "val")
    assert [r.id for r in val.records] == ["astronaut"] and len(train) == 3
    for dataset in (train, val):
        for index in range(len(dataset)):
            sample = dataset[index]
            assert not sample.normals_valid.any()  # normals: never labelled on photos
            assert set(np.unique(sample.saliency)) <= {0, 1}
            assert set(np.unique(sample.edges)) <= {0, 1}
            assert {"saliency", "edges"} <= set(labelled_tasks(sample))
            assert set(dataset.labels(index)) == {"image", *LABELS}


def test_the_astronaut_is_a_person_with_parts(tree):
    sample = PhotoSet(tree[0], "val")[0]
    face = np.s_[35:85, 90:135]  # her face at 256 px
    assert (sample.semseg[face] == PHOTO_CLASSES.index("person")).mean() > 0.9
    assert (sample.parts[face] == 1).mean() > 0.5  # head
    assert set(labelled_tasks(sample)) == {"semseg", "parts", "saliency", "edges"}


def test_the_blank_image_has_no_person_no_parts_and_no_edges(tree):
    blank = PhotoSet(tree[0], "train", kinds=("photo",))
    sample = blank[[r.id for r in blank.records].index("blank")]
    assert (sample.semseg == 0).all() and (sample.parts == IGNORE_INDEX).all()
    assert sample.edges.sum() == 0 and "parts" not in labelled_tasks(sample)


def test_a_composites_semseg_is_its_stamp_and_renames_into_another_class_list(tree):
    composite = PhotoSet(tree[0], "train", kinds=("composite",))
    sample = composite[0]
    blue = (sample.image[..., 2] > 150) & (sample.image[..., 0] < 60)
    assert (sample.semseg[blue] == PHOTO_CLASSES.index("vehicle")).mean() > 0.99
    renamed = PhotoSet(tree[0], "train", ("composite",), ("background", "vehicle"))[0]
    assert (renamed.semseg[blue] == 1).mean() > 0.99
    people_only = PhotoSet(tree[0], "train", ("composite",), ("background", "person"))[0]
    assert (people_only.semseg[blue] == IGNORE_INDEX).all()  # no such class there


def test_relabelling_from_stored_outputs_gives_the_same_labels(tree):
    root, records = tree
    before = {r.id: PhotoSet(root, r.split).labels(0) for r in records[:1]}
    measured = relabel_set(root)  # every item, and the agreement into build.json
    assert json.loads((root / BUILD).read_text())["agreement"] == measured
    for item_id, maps in before.items():
        for name in ("semseg", "parts", "edges", "person"):
            assert np.array_equal(read_png(item_dir(root, item_id) / f"{name}.png"), maps[name])


def test_agreement_and_contact_sheet(tree, tmp_path):
    root, records = tree
    measured = agreement(root, records)
    assert measured["people"]["photo"]["isnet_vs_pose"]["images"] == 2
    assert measured["people"]["photo"]["people_photos_pose_found_nobody_in"] == 0
    assert measured["no_people"]["photos"] == 1
    assert measured["composites"]["stamp_pixels_salient"] is not None
    rows = contact_sheet(root, records, tmp_path / "sheet.png", any_licence=False)
    assert rows == 3  # public domain and CC0 only: not the composite of GPL stamps
    picture = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert (picture == PHOTO_PALETTE[PHOTO_CLASSES.index("person")]).all(axis=2).any()
