"""Composites: stamps pasted whole, their semseg exact, classes from their folders."""

import numpy as np
from PIL import Image

from model.data.photos.composites import Stamp, compose, stamp_class
from model.tasks import PHOTO_CLASSES


def test_a_stamps_folder_names_its_class_and_drawings_are_left_out():
    assert stamp_class("animals/birds/crow.png") == "animal"
    assert stamp_class("military/vehicles/tank.png") == "vehicle"
    assert stamp_class("food/fruit/apple.png") == "food"
    assert stamp_class("animals/birds/cartoon/tweety.png") is None
    assert stamp_class("animals/mammals/bears/toys/teddy.png") is None
    assert stamp_class("symbols/shapes/star.png") is None
    assert stamp_class("food/dessert/cake.png") is None


def write_stamp(path, size=(60, 80)) -> None:
    """A red disc on a transparent square."""
    rows, cols = np.mgrid[: size[1], : size[0]]
    inside = (cols - size[0] / 2) ** 2 + (rows - size[1] / 2) ** 2 < (min(size) / 2 - 1) ** 2
    rgba = np.zeros((*size[::-1], 4), np.uint8)
    rgba[inside] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(path)


def test_semseg_is_exactly_where_the_stamp_is_opaque(tmp_path):
    write_stamp(tmp_path / "disc.png")
    stamps = [
        Stamp("animals/disc.png", tmp_path / "disc.png", "animal", "train"),
        Stamp("food/disc.png", tmp_path / "disc.png", "food", "train"),
    ]
    background = np.full((300, 400, 3), 40, np.uint8)
    image, semseg, pasted = compose(background, stamps, np.random.default_rng(0))
    assert image.shape == (480, 640, 3) and semseg.shape == (480, 640)
    red = (image[..., 0] > 200) & (image[..., 1] < 30)
    labelled = semseg > 0
    assert (red == labelled).mean() > 0.995  # only anti-aliased rims may differ
    x0, y0, x1, y1 = pasted[1]["box"]  # the last stamp is on top
    top = semseg[y0:y1, x0:x1][red[y0:y1, x0:x1]]
    assert (top == PHOTO_CLASSES.index("food")).all()
    assert 0.3 * 480 <= y1 - y0 <= 0.6 * 480 + 1 and x1 <= 640 and y1 <= 480


def test_the_same_generator_gives_the_same_composite(tmp_path):
    write_stamp(tmp_path / "disc.png")
    stamps = [Stamp("a.png", tmp_path / "disc.png", "vehicle", "val")]
    background = np.random.default_rng(1).integers(0, 255, (500, 300, 3), dtype=np.uint8)
    first = compose(background, stamps, np.random.default_rng(5))
    second = compose(background, stamps, np.random.default_rng(5))
    assert np.array_equal(first[0], second[0]) and first[2] == second[2]
    assert first[0].shape == (640, 480, 3)  # a portrait photo gives a portrait composite
