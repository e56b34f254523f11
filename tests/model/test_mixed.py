"""Scenes and photos in every batch: which sample each position holds, the photos' random
scale and crop, and the training step that computes only the labelled (image, task) pairs."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from model.data.mixed import (
    FULL_VIEW,
    OUTLINE,
    MixedDataset,
    PhotoCrop,
    PhotoMapsSource,
    crop_window,
    paste_person,
    photo_classes,
)
from model.data.sampling import train_loader
from model.data.synthetic import SyntheticScenes
from model.data.transforms import EvalTransform, collate, greyscale
from model.distributed import Processes
from model.presets import tiny
from model.tasks import IGNORE_INDEX, SCENES_AND_PHOTOS, TASK_NAMES
from model.trainer import labelled_streams, train
from tests.model.photo_tree import SIZE, box, mixed_data, write_photo_tree

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


def test_full_view_sets_the_share_of_whole_photo_windows():
    def whole_share(full_view: float) -> float:
        rng = np.random.default_rng(3)
        windows = [crop_window(960, 1280, 192, rng, full_view=full_view) for _ in range(400)]
        return sum(w[2:] == (960, 1280) for w in windows) / len(windows)

    assert abs(whole_share(0.6) - 0.6) < 0.07
    assert whole_share(0.0) == 0.0 and whole_share(1.0) == 1.0


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
    data = replace(data, paste_people=0.5, nobody_parts=True)  # the photo recipe's options
    config = replace(config, model=model, data=data, batch_size=4)
    train(config, tmp_path / "run", until=5)
    metrics = train(config, tmp_path / "run", resume=True)
    assert metrics and all(np.isfinite(v) for v in metrics.values())
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"step": 8' in log


def test_photos_with_nobody_label_their_parts_background_when_asked(photo_root):
    skipped, labelled = (PhotoMapsSource(photo_root, "train", CLASSES, n) for n in (False, True))
    chelsea = 1  # the catalogue says nobody is in it
    assert skipped[chelsea].nobody and (skipped[chelsea].parts == IGNORE_INDEX).all()
    assert (labelled[chelsea].parts == 0).all()
    astronaut = 0
    assert not labelled[astronaut].nobody
    assert np.array_equal(labelled[astronaut].parts, skipped[astronaut].parts)


def test_each_person_of_the_photos_with_people_is_cut_out(photo_root):
    cutouts = PhotoMapsSource(photo_root, "train", CLASSES).person_cutouts()
    assert len(cutouts) == 1 and len(cutouts[0]) == 1  # the astronaut's one person
    person = cutouts[0][0]
    label = box(SIZE, 0.2, 0.3, 0.9, 0.7)  # photo_tree's person
    assert person.mask.all() and person.mask.shape == (label.any(1).sum(), label.any(0).sum())
    assert set(np.unique(person.parts)) == {1, 2} and not person.grounded


def whole_view(crop: PhotoCrop, photo, seed: int = 1):
    """``crop(photo)`` with a generator that draws the whole photo's window."""
    rng = np.random.default_rng(seed)
    while True:
        state = rng.bit_generator.state
        if crop_window(*photo.image.shape[:2], crop.size, rng)[2:] == photo.image.shape[:2]:
            break
    rng.bit_generator.state = state
    return crop(photo, rng)


def test_a_pasted_person_brings_its_labels_and_leaves_the_unknown_unlabelled(photo_root):
    photos = PhotoMapsSource(photo_root, "train", CLASSES, nobody_parts=True)
    cutout = photos.person_cutouts()[0][0]
    chelsea = whole_view(PhotoCrop(48, flip=False, photometric=False), photos[1])
    pasted = paste_person(chelsea, cutout, photos.person, np.random.default_rng(3))
    person = pasted.semseg == photos.person
    assert person.sum() > 50 and not (chelsea.semseg == photos.person).any()
    assert (pasted.saliency[person] == IGNORE_INDEX).all()  # nobody asked ISNet about it
    assert (pasted.saliency[~person] == chelsea.saliency[~person]).all()
    assert set(np.unique(pasted.parts[person])) <= {1, 2}  # the astronaut's head and torso
    assert (pasted.parts[~person] == 0).all()  # still nobody else
    unlabelled = pasted.edges == IGNORE_INDEX  # a band round the outline
    rows = np.flatnonzero(person.any(1))
    assert unlabelled[max(0, rows[0] - OUTLINE) : rows[0] + OUTLINE].any()
    assert not unlabelled[~person].all() and (pasted.edges[~unlabelled] <= 1).all()
    far = ~unlabelled & ~person
    assert (pasted.edges[far] == chelsea.edges[far]).all()
    assert (pasted.image[~person] == chelsea.image[~person]).all()
    grounded = paste_person(
        chelsea, replace(cutout, grounded=True), photos.person, np.random.default_rng(3)
    )
    assert (grounded.semseg[-1] == photos.person).any()  # stands on the crop's bottom


def test_only_photos_with_nobody_get_a_person_pasted_at_the_share_asked(photo_root):
    photos = PhotoMapsSource(photo_root, "train", CLASSES)
    crop = PhotoCrop(32, cutouts=photos.person_cutouts(), paste_people=0.5, person_id=photos.person)
    rng = np.random.default_rng(0)
    chelsea = [crop(photos[1], rng) for _ in range(200)]
    share = np.mean([(s.semseg == photos.person).any() for s in chelsea])
    assert 0.4 < share < 0.6
    astronaut = [crop(photos[0], rng) for _ in range(50)]
    assert all((s.saliency != IGNORE_INDEX).all() for s in astronaut)  # never pasted on
    with pytest.raises(ValueError, match="cut-outs"):
        PhotoCrop(32, paste_people=0.5, person_id=photos.person)


def test_people_are_pasted_only_in_a_stage_that_trains_a_person_task(photo_root):
    config = tiny()
    data = replace(mixed_data(photo_root), paste_people=0.5)
    config = replace(config, model=replace(config.model, dataset=SCENES_AND_PHOTOS), data=data)

    def share(tasks):
        return train_loader(config, tasks, 0, 1, Processes()).dataset.photo_transform.paste_people

    assert share(("saliency",)) == 0.0  # the photo recipe's stage 1
    assert share(("semseg", "saliency")) == share(("parts",)) == 0.5


def test_grey_crops_are_the_colour_crops_in_black_and_white(photo_root):
    photo = PhotoMapsSource(photo_root, "train", CLASSES)[0]
    colour_crop = PhotoCrop(48, flip=False, photometric=False)
    grey_crop = PhotoCrop(48, flip=False, photometric=False, grey=1.0)
    colour = colour_crop(photo, np.random.default_rng(5))
    grey = grey_crop(photo, np.random.default_rng(5))  # the same window
    assert (colour.image[..., 0] != colour.image[..., 1]).any()  # the test photo has colour
    assert (grey.image == greyscale(colour.image)).all()
    assert (grey.semseg == colour.semseg).all() and (grey.saliency == colour.saliency).all()
    half = PhotoCrop(32, grey=0.5)
    rng = np.random.default_rng(0)
    crops = [half(photo, rng).image for _ in range(200)]
    share = np.mean(
        [(c[..., 0] == c[..., 1]).all() and (c[..., 1] == c[..., 2]).all() for c in crops]
    )
    assert 0.4 < share < 0.6


def test_grey_photos_full_views_and_soft_saliency_reach_the_photo_crops_of_every_stage(
    photo_root,
):
    config = tiny()
    data = replace(mixed_data(photo_root), grey_photos=0.25, full_views=0.5, soft_saliency=True)
    config = replace(config, model=replace(config.model, dataset=SCENES_AND_PHOTOS), data=data)
    for tasks in (("saliency",), ("semseg", "parts")):
        crop = train_loader(config, tasks, 0, 1, Processes()).dataset.photo_transform
        assert (crop.grey, crop.full_view, crop.soft_saliency) == (0.25, 0.5, True)


def test_a_soft_saliency_label_is_isnets_probability_where_the_hard_one_binarises_it(
    photo_root,
):
    photo = PhotoMapsSource(photo_root, "train", CLASSES)[0]  # stored 230 in the box, 20 off
    hard = PhotoCrop(48, flip=False, photometric=False)(photo, np.random.default_rng(2))
    soft = PhotoCrop(48, flip=False, photometric=False, soft_saliency=True)(
        photo,
        np.random.default_rng(2),  # the same window
    )
    assert soft.saliency.dtype == np.float32 and hard.saliency.dtype == np.uint8
    assert ((soft.saliency > 0.5) == (hard.saliency == 1)).all()
    assert np.isclose(soft.saliency.max(), 230 / 255) and np.isclose(soft.saliency.min(), 20 / 255)
    people = PhotoMapsSource(photo_root, "train", CLASSES).person_cutouts()
    pasted = paste_person(soft, people[0][0], CLASSES.index("person"), np.random.default_rng(0))
    assert pasted.saliency.dtype == np.float32
    assert (pasted.saliency == IGNORE_INDEX).any()  # unlabelled under the pasted person
    dataset = MixedDataset(
        SyntheticScenes(32, 1000, seed=0, split="train"),
        EvalTransform(32),
        PhotoMapsSource(photo_root, "train", CLASSES),
        PhotoCrop(32, soft_saliency=True),
        4,
        2,
        TASK_NAMES,
    )
    torch.manual_seed(0)
    _, targets = collate([dataset[p] for p in range(4)])
    photos, scenes = targets["saliency"][:2], targets["saliency"][2:]
    assert ((photos > 0) & (photos < 1)).all()  # soft photos beside hard scenes in one batch
    assert ((scenes == 0) | (scenes == 1)).all()


def test_a_crop_with_only_full_views_is_always_the_whole_photo(photo_root):
    photo = PhotoMapsSource(photo_root, "train", CLASSES)[0]
    whole = PhotoCrop(48, flip=False, photometric=False, full_view=1.0)
    crops = [whole(photo, np.random.default_rng(seed)).image for seed in range(6)]
    assert all((crop == crops[0]).all() for crop in crops)
    windows = PhotoCrop(48, flip=False, photometric=False)  # the served share: 0.25
    assert any((windows(photo, np.random.default_rng(s)).image != crops[0]).any() for s in range(6))
