"""Augmentations keep labels consistent; the torch adapter yields the documented batch."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from model.data import NORMALS_VALID, SyntheticScenes
from model.data.transforms import (
    IMAGENET_MEAN,
    EvalTransform,
    MultiTaskDataset,
    TrainTransform,
    collate,
    crop_or_pad,
    greyscale,
    horizontal_flip,
    resize_bilinear,
)
from model.tasks import IGNORE_INDEX, TASK_NAMES

LABELS = ("semseg", "parts", "saliency", "edges")


@pytest.fixture(scope="module")
def sample():
    scenes = SyntheticScenes(48, 20, seed=9)
    return next(scenes[i] for i in range(20) if scenes[i].has_person)


def test_train_transform_keeps_label_values_and_unit_normals(sample):
    transform = TrainTransform(32)
    for seed in range(6):
        out = transform(sample, np.random.default_rng(seed))
        assert out.size == (32, 32)
        for name in LABELS:
            allowed = set(np.unique(getattr(sample, name))) | {IGNORE_INDEX}
            assert set(np.unique(getattr(out, name))) <= allowed, name
        length = np.linalg.norm(out.normals, axis=2)
        np.testing.assert_allclose(length[out.normals_valid], 1.0, atol=1e-5)
        assert (length[~out.normals_valid] == 0).all()


def test_padding_fills_labels_with_ignore_and_the_image_with_the_mean(sample):
    out = crop_or_pad(sample, (60, 64), np.random.default_rng(0))
    assert out.size == (60, 64)
    for name in LABELS:
        assert (getattr(out, name)[48:] == IGNORE_INDEX).all()
        assert (getattr(out, name)[:, 48:] == IGNORE_INDEX).all()
    assert not out.normals_valid[48:].any()
    np.testing.assert_array_equal(out.image[50, 50], np.round(np.array(IMAGENET_MEAN) * 255))


def test_flip_negates_x_only(sample):
    flipped = horizontal_flip(sample)
    np.testing.assert_allclose(flipped.normals[..., 0], -sample.normals[:, ::-1, 0])
    np.testing.assert_allclose(flipped.normals[..., 1:], sample.normals[:, ::-1, 1:])
    np.testing.assert_array_equal(flipped.parts, sample.parts[:, ::-1])


def test_photometric_distortion_touches_the_image_only(sample):
    out = TrainTransform(48, scale=(1.0, 1.0), flip=False)(sample, np.random.default_rng(1))
    assert not np.array_equal(out.image, sample.image)
    for name in (*LABELS, "normals"):
        np.testing.assert_array_equal(getattr(out, name), getattr(sample, name))


def test_greyscale_keeps_luma_in_all_three_channels():
    image = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)
    grey = greyscale(image)
    assert grey.dtype == np.uint8 and grey.shape == image.shape
    assert grey[0, :, 0].tolist() == [76, 150, 29, 255]  # BT.601: 0.299, 0.587, 0.114 of 255
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_eval_transform_resizes_labels_nearest_and_renormalises_normals(sample):
    out = EvalTransform(80)(sample)
    assert out.size == (80, 80)
    for name in LABELS:
        assert set(np.unique(getattr(out, name))) <= set(np.unique(getattr(sample, name)))
    np.testing.assert_allclose(np.linalg.norm(out.normals, axis=2), 1.0, atol=1e-5)


def test_bilinear_resize_of_a_ramp_stays_a_ramp():
    ramp = np.tile(np.arange(8, dtype=np.float32), (4, 1))  # (4, 8), value = column
    half = resize_bilinear(ramp, (2, 4))
    np.testing.assert_allclose(half[0], [0.5, 2.5, 4.5, 6.5])


def test_loader_yields_the_documented_batch():
    torch.manual_seed(0)
    # Scale 0.5-0.6 leaves a padded border, so ignore values must show up in every target.
    dataset = MultiTaskDataset(SyntheticScenes(40, 6, seed=1), TrainTransform(32, (0.5, 0.6)))
    images, targets = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate)))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert set(targets) == {*TASK_NAMES, NORMALS_VALID}
    for task in ("semseg", "parts"):
        assert targets[task].shape == (3, 32, 32) and targets[task].dtype == torch.int64
    for task in ("saliency", "edges"):
        assert targets[task].dtype == torch.float32
        assert set(targets[task].unique().tolist()) <= {0.0, 1.0, 255.0}
    assert targets["normals"].shape == (3, 3, 32, 32)
    valid = targets[NORMALS_VALID]
    assert valid.shape == (3, 32, 32) and valid.dtype == torch.bool
    assert not valid.all(), "the small scale range must pad"
    assert (targets["normals"].permute(0, 2, 3, 1)[~valid] == 255.0).all()
    assert torch.allclose(targets["normals"].norm(dim=1)[valid], torch.tensor(1.0), atol=1e-5)
    assert (targets["semseg"][~valid] == 255).all()
    # Normalised: a mid-grey pixel would be near 0; values stay in the ImageNet range.
    assert images.min() > -2.2 and images.max() < 2.7


def test_loader_augmentation_is_reproducible_under_torch_seed_and_task_subsets():
    dataset = MultiTaskDataset(SyntheticScenes(40, 2, seed=1), TrainTransform(32), ("semseg",))
    torch.manual_seed(3)
    first = dataset[0]
    torch.manual_seed(3)
    again = dataset[0]
    other = dataset[0]
    assert set(first) == {"image", "semseg"}
    assert torch.equal(first["image"], again["image"])
    assert not torch.equal(first["image"], other["image"])
    with pytest.raises(ValueError, match="unknown task"):
        MultiTaskDataset(SyntheticScenes(40, 2), tasks=("depth",))


def test_only_saliency_may_be_a_soft_float32_label(sample):
    soft = sample.saliency.astype(np.float32) * 0.5
    flipped = horizontal_flip(replace(sample, saliency=soft))
    assert flipped.saliency.dtype == np.float32 and (flipped.saliency == soft[:, ::-1]).all()
    with pytest.raises(ValueError, match=r"edges must be \(48, 48\) uint8, got .* float32"):
        replace(sample, edges=sample.edges.astype(np.float32))
    with pytest.raises(ValueError, match=r"saliency must be \(48, 48\) uint8 or float32"):
        replace(sample, saliency=soft.astype(np.float64))
