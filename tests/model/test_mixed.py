"""Scenes and photos in every batch: which sample each position holds, the photos' random
scale and crop, and the training step that computes only the labelled (image, task) pairs."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from model.data.mixed import (
    FULL_VIEW,
    MixedDataset,
    PhotoCrop,
    PhotoMapsSource,
    crop_window,
    photo_classes,
)
from model.data.synthetic import SyntheticScenes
from model.data.transforms import EvalTransform, collate
from model.presets import tiny
from model.tasks import IGNORE_INDEX, SCENES_AND_PHOTOS, TASK_NAMES
from model.trainer import labelled_streams, train
from tests.model.photo_tree import mixed_data, write_photo_tree

CLASSES = photo_classes(SCENES_AND_PHOTOS)


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    return write_photo_tree(tmp_path_factory.mktemp("photos"))


def mixed(photo_root, batch=4, per_batch=2, size=32):
    photos = PhotoMapsSource(photo_root, "train", CLASSES)
    scenes = SyntheticScenes(size, 1000, seed=0, split="train")
    return MixedDataset(
        scenes, EvalTransform(size), photos, PhotoCrop(size), batch, per_batch, TASK_NAMES
    )


def test_each_batch_holds_people_then_any_photos_then_new_scenes(photo_root):
    dataset = mixed(photo_root)
    kinds = [dataset.which(p) for p in range(24)]  # six batches of 2 photos + 2 scenes
    assert [k for k, _ in kinds] == ["photo", "photo", "scene", "scene"] * 6
    people = [i for p, (_, i) in enumerate(kinds) if p % 4 == 0]
    assert people == [0] * 6  # the astronaut: the one training photo with people
    anything = [i for p, (_, i) in enumerate(kinds) if p % 4 == 1]
    assert sorted(anything[:3]) == [0, 1, 2] and sorted(anything[3:]) == [0, 1, 2]  # epochs
    assert [i for k, i in kinds if k == "scene"] == list(range(12))  # never a scene twice
    assert mixed(photo_root).which(7) == dataset.which(7)  # a pure function of the position


def test_a_focused_window_holds_its_person_pixel():
    rng = np.random.default_rng(0)
    for _ in range(200):
        focus = (int(rng.integers(0, 960)), int(rng.integers(0, 1280)))
        top, left, rows, cols = crop_window(960, 1280, 192, rng, focus)
        assert top <= focus[0] < top + rows and left <= focus[1] < left + cols


def test_photo_items_label_what_their_teachers_saw_and_nothing_else(photo_root):
    dataset = mixed(photo_root)
    torch.manual_seed(0)
    images, targets = collate([dataset[p] for p in range(4)])
    assert images.shape == (4, 3, 32, 32)
    assert not targets["normals_valid"][:2].any() and targets["normals_valid"][2:].all()
    assert ((targets["saliency"][:2] == 0) | (targets["saliency"][:2] == 1)).all()
    assert set(targets["semseg"][:2].unique().tolist()) <= {0, 1, IGNORE_INDEX}


def test_crop_windows_span_close_ups_to_the_whole_photo():
    rng = np.random.default_rng(0)
    windows = [crop_window(960, 1280, 192, rng) for _ in range(400)]
    whole = sum(w[2:] == (960, 1280) for w in windows) / len(windows)
    assert abs(whole - FULL_VIEW) < 0.07
    assert min(w[2] for w in windows) < 200  # close-ups of about the model's size
    for top, left, rows, cols in windows:
        assert abs(cols / rows - 1280 / 960) < 0.02  # the photo's own aspect
        assert top + rows <= 960 and left + cols <= 1280


def test_the_whole_photo_crop_keeps_the_teachers_labels(photo_root):
    photo = PhotoMapsSource(photo_root, "train", CLASSES)[0]  # astronaut: person in the box
    assert len(photo.person_pixels) > 0
    photo = replace(photo, person_pixels=np.empty(0, np.int64))  # no focused window: one draw
    crop = PhotoCrop(48, flip=False, photometric=False)
    rng = np.random.default_rng(1)
    while True:  # a draw that takes the whole photo
        state = rng.bit_generator.state
        if crop_window(96, 128, 48, rng)[2:] == (96, 128):
            break
    rng.bit_generator.state = state
    sample = crop(photo, rng)
    assert sample.image.shape == (48, 48, 3)
    assert sample.saliency[24, 24] == 1 and sample.saliency[2, 2] == 0
    assert sample.semseg[24, 24] == CLASSES.index("person")
    assert sample.edges.sum() > 0 and sample.edges[24, 24] == 0  # the thinned box outline


def test_only_labelled_pairs_become_streams():
    batch = 3
    targets = {
        task: torch.full((batch, 4, 4), float(IGNORE_INDEX)) for task in ("saliency", "edges")
    }
    targets["semseg"] = torch.zeros(batch, 4, 4, dtype=torch.int64)
    targets["parts"] = torch.full((batch, 4, 4), IGNORE_INDEX, dtype=torch.int64)
    targets["parts"][1, 0, 0] = 2  # only image 1 shows a person
    targets["normals"] = torch.full((batch, 3, 4, 4), float(IGNORE_INDEX))
    targets["normals_valid"] = torch.zeros(batch, 4, 4, dtype=torch.bool)
    targets["normals_valid"][2] = True
    targets["saliency"][:] = 0.0
    image, task = labelled_streams(targets, TASK_NAMES, torch.device("cpu"))
    pairs = list(zip(image.tolist(), [TASK_NAMES[t] for t in task.tolist()], strict=True))
    assert pairs == [
        (0, "semseg"), (0, "saliency"),
        (1, "semseg"), (1, "parts"), (1, "saliency"),
        (2, "semseg"), (2, "saliency"), (2, "normals"),
    ]  # fmt: skip  # one image a row


def test_a_tiny_mixed_run_trains_and_resumes(photo_root, tmp_path):
    config = tiny()
    model = replace(config.model, dataset=SCENES_AND_PHOTOS)
    data = mixed_data(photo_root, val_size=2)
    config = replace(config, model=model, data=data, batch_size=4)
    train(config, tmp_path / "run", until=5)
    metrics = train(config, tmp_path / "run", resume=True)
    assert metrics and all(np.isfinite(v) for v in metrics.values())
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"step": 8' in log
