"""From teacher outputs to labels: what is labelled, what is left as 255, and why."""

import numpy as np
import pytest

from model.data.photos.labels import edge_map, parts_map, person_map, semseg_map
from model.tasks import IGNORE_INDEX, PHOTO_CLASSES
from model.teachers.people import PeopleLabels, Person

SHAPE = (40, 60)


def people(selfie_box=None, pose_boxes=()) -> PeopleLabels:
    selfie = np.zeros(SHAPE, np.float32)
    if selfie_box:
        selfie[selfie_box] = 0.9
    persons = []
    for box in pose_boxes:
        mask = np.zeros(SHAPE, np.float32)
        mask[box] = 0.95
        persons.append(Person(mask, np.zeros((33, 4), np.float32)))
    return PeopleLabels(selfie, persons)


LEFT = np.s_[5:35, 5:20]
RIGHT = np.s_[5:35, 40:55]
NOTHING = np.zeros(SHAPE, np.float32)  # ISNet's saliency: nothing salient


def test_nobody_in_the_photo_means_no_person_whatever_the_teachers_say():
    label = person_map(people(RIGHT, [LEFT]), "none", NOTHING)
    assert (label == 0).all()


def test_all_found_people_are_persons_selfie_only_pixels_are_unsure():
    label = person_map(people(RIGHT, [LEFT]), "all", NOTHING)
    assert (label[LEFT] == 1).all() and (label[RIGHT] == IGNORE_INDEX).all()
    rest = np.ones(SHAPE, bool)
    rest[LEFT] = rest[RIGHT] = False
    assert (label[rest] == 0).all()


def test_a_salient_object_pose_did_not_find_is_unsure_not_background():
    saliency = np.zeros(SHAPE, np.float32)
    saliency[RIGHT] = 0.8  # e.g. a second walker beside the one pose found
    label = person_map(people(None, [LEFT]), "all", saliency)
    assert (label[LEFT] == 1).all() and (label[RIGHT] == IGNORE_INDEX).all()
    assert (label[:, 25:35] == 0).all()


def test_some_people_leaves_everything_but_the_found_unlabelled():
    label = person_map(people(None, [LEFT]), "some", NOTHING)
    assert (label[LEFT] == 1).all() and (label[RIGHT] == IGNORE_INDEX).all()


@pytest.mark.parametrize("shows", ["all", "some"])
def test_people_said_to_be_there_but_not_found_are_all_unlabelled(shows):
    assert (person_map(people(RIGHT, []), shows, NOTHING) == IGNORE_INDEX).all()


def test_agreed_people_are_where_the_selfie_mask_and_isnet_agree():
    saliency = np.zeros(SHAPE, np.float32)
    saliency[5:35, 5:50] = 0.8  # salient: the portrait (LEFT) and something beside it
    found = people(LEFT, [])  # pose found nobody; the selfie mask sees LEFT only
    label = person_map(found, "agreed", saliency)
    assert (label[LEFT] == 1).all()
    assert (label[5:35, 20:50] == IGNORE_INDEX).all()  # ISNet alone: unsure
    assert (label[:, 50:] == 0).all() and (label[:5] == 0).all()  # neither: not a person


def test_agreed_people_keep_whom_pose_found():
    label = person_map(people(None, [RIGHT]), "agreed", NOTHING)
    assert (label[RIGHT] == 1).all() and (label[LEFT] == 0).all()


def test_parts_are_all_unlabelled_without_a_found_person():
    person = np.zeros(SHAPE, np.uint8)
    assert (parts_map(person, people()) == IGNORE_INDEX).all()


def test_parts_are_background_where_there_is_no_person():
    found = people(None, [LEFT])
    parts = parts_map(person_map(found, "all", NOTHING), found)
    assert (parts[:, 25:] == 0).all()
    assert (parts[LEFT] == IGNORE_INDEX).all()  # landmarks all invisible: no part known


def test_semseg_follows_the_catalogue_and_the_person_label():
    person = np.zeros(SHAPE, np.uint8)
    person[LEFT] = 1
    person[0, :] = IGNORE_INDEX
    saliency = np.zeros(SHAPE, np.float32)
    saliency[RIGHT] = 0.9
    saliency[20, 25] = 0.5  # in the unsure band
    animal = semseg_map(person, saliency, "animal")
    assert (animal[LEFT] == PHOTO_CLASSES.index("person")).all()
    assert (animal[RIGHT] == PHOTO_CLASSES.index("animal")).all()
    assert animal[20, 25] == IGNORE_INDEX and (animal[0] == IGNORE_INDEX).all()
    assert animal[30, 30] == 0
    assert (semseg_map(person, saliency, "background")[RIGHT] == 0).all()
    unknown = semseg_map(person, saliency, "unknown")
    assert (unknown[RIGHT] == IGNORE_INDEX).all() and (unknown[LEFT] == 1).all()


def test_edges_are_thinned_to_one_pixel_and_a_flat_map_has_none():
    probability = np.zeros(SHAPE, np.float32)
    probability[10:30, 18:23] = 0.9  # a 5-pixel-wide band
    edges = edge_map(probability)
    assert edges.sum() > 0 and edges[:, :17].sum() == 0 and edges[:, 24:].sum() == 0
    assert edges.sum(axis=1).max() == 1  # one pixel wide on every row
    assert edge_map(np.full(SHAPE, 0.3, np.float32)).sum() == 0
