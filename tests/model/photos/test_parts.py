"""Human parts from pose landmarks: each mask pixel gets the part of the nearest skeleton
element, limbs before the torso, and 255 where the skeleton says nothing."""

import numpy as np
import pytest

from model.data.photos.parts import person_parts
from model.tasks import IGNORE_INDEX, PARTS_CLASSES

# A person standing, facing the camera, arms down, in a 200 x 120 image (x, y); BlazePose ids.
JOINTS = {
    0: (60, 20),
    2: (55, 16),
    5: (65, 16),
    7: (48, 20),
    8: (72, 20),
    9: (56, 27),
    10: (64, 27),
    11: (40, 45),
    12: (80, 45),
    13: (32, 75),
    14: (88, 75),
    15: (30, 100),
    16: (90, 100),
    23: (48, 100),
    24: (72, 100),
    25: (48, 140),
    26: (72, 140),
    27: (48, 180),
    28: (72, 180),
}


def landmarks(hidden: tuple[int, ...] = ()) -> np.ndarray:
    points = np.zeros((33, 4), np.float32)  # visibility 0: unused
    for index, (x, y) in JOINTS.items():
        points[index] = (x, y, 0.0, 0.0 if index in hidden else 1.0)
    return points


def capsule(mask: np.ndarray, a, b, radius: float) -> None:
    rows, cols = np.mgrid[: mask.shape[0], : mask.shape[1]]
    pixels = np.stack([cols, rows], axis=-1).astype(float)
    a, b = np.array(a, float), np.array(b, float)
    t = np.clip(((pixels - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    mask |= np.linalg.norm(pixels - (a + t[..., None] * (b - a)), axis=-1) <= radius


@pytest.fixture
def figure() -> np.ndarray:
    mask = np.zeros((200, 120), bool)
    capsule(mask, (60, 12), (60, 28), 11)  # head
    capsule(mask, (60, 45), (60, 100), 18)  # torso
    for a, b in ((11, 13), (13, 15), (12, 14), (14, 16), (23, 25), (25, 27), (24, 26), (26, 28)):
        capsule(mask, JOINTS[a], JOINTS[b], 5)
    return mask


def part_at(parts: np.ndarray, x: int, y: int) -> str:
    return PARTS_CLASSES[parts[y, x]]


def test_each_body_region_gets_its_part(figure):
    parts = person_parts(figure, landmarks())
    assert part_at(parts, 60, 15) == "head"
    assert part_at(parts, 60, 70) == "torso"
    assert part_at(parts, 34, 62) == "upper_arm" and part_at(parts, 86, 62) == "upper_arm"
    assert part_at(parts, 31, 92) == "lower_arm"
    assert part_at(parts, 48, 120) == "upper_leg" and part_at(parts, 72, 160) == "lower_leg"
    assert (parts[~figure] == 0).all()  # off the mask: background
    assert set(np.unique(parts[figure])) <= set(range(1, len(PARTS_CLASSES)))


def test_an_arm_in_front_of_the_torso_is_an_arm(figure):
    points = landmarks()
    points[15, :2] = (60, 70)  # the left wrist crosses over the belly
    mask = figure.copy()
    capsule(mask, JOINTS[13], (60, 70), 5)
    parts = person_parts(mask, points)
    assert part_at(parts, 50, 72) == "lower_arm"
    assert part_at(parts, 70, 55) == "torso"


def test_hidden_legs_leave_their_pixels_unlabelled(figure):
    parts = person_parts(figure, landmarks(hidden=(25, 26, 27, 28)))
    assert parts[180, 48] == IGNORE_INDEX  # an ankle, far from every visible element
    assert part_at(parts, 60, 15) == "head"


def test_without_shoulders_the_person_is_unlabelled(figure):
    parts = person_parts(figure, landmarks(hidden=(11, 12)))
    assert (parts[figure] == IGNORE_INDEX).all() and (parts[~figure] == 0).all()
