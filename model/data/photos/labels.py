"""Label maps of one photo from its teachers' raw outputs (NumPy only).

- saliency: ISNet's probability, stored as round(255 p); the task's {0, 1} label is p > 0.5.
- edges: HED's probability >= ``EDGE_THRESHOLD``, thinned to 1-pixel lines by scikit-image's
  ``thin`` (what the PASCAL benchmark does to its label boundaries); {0, 1}, never ignored.
- person: {0, 1, 255} from pose's persons, the selfie mask, ISNet's saliency and the
  catalogue's ``people`` (``catalog.py``): ``none`` all 0; ``all`` 1 on pose's persons, 255
  where only the selfie segmenter sees a person or ISNet sees a salient object (pose misses
  people who touch the one it found: a walking group), 0 elsewhere; ``some`` 1 on pose's
  persons, 255 elsewhere; and all 255 when the catalogue says people are there but pose
  found none; ``agreed`` (people close to the camera whom pose misses: a bust portrait) 1 on
  pose's persons and where both the selfie mask and ISNet see something, 255 where only one
  of them does, 0 elsewhere.
- parts: ``PARTS_CLASSES`` ids on pose's persons (``parts.person_parts``), 0 where the person
  label is 0, 255 elsewhere; all 255 when the photo has no person found (the PASCAL rule).
- semseg: ``PHOTO_CLASSES`` ids from the catalogue's ``semseg`` and the person label (see
  ``semseg_map``).
"""

from __future__ import annotations

import numpy as np
from skimage.morphology import thin

from model.data.photos.parts import person_parts
from model.tasks import IGNORE_INDEX, PHOTO_CLASSES
from model.teachers.people import PeopleLabels

EDGE_THRESHOLD = 0.5
SALIENT = 0.5  # ISNet probability of a salient pixel
SUBJECT_BAND = (0.25, 0.75)  # a tagged subject's class between these is left unlabelled
PERSON = PHOTO_CLASSES.index("person")


def probability_png(probability: np.ndarray) -> np.ndarray:
    """[0, 1] -> uint8 round(255 p)."""
    return np.round(np.clip(probability, 0.0, 1.0) * 255).astype(np.uint8)


def edge_map(probability: np.ndarray, threshold: float = EDGE_THRESHOLD) -> np.ndarray:
    """(H, W) uint8 {0, 1}: 1-pixel lines along HED's edges."""
    return thin(probability >= threshold).astype(np.uint8)


def person_map(people: PeopleLabels, shows: str, saliency: np.ndarray) -> np.ndarray:
    """(H, W) uint8 {0, 1, 255} (see the module docstring); ``shows`` is the catalogue's
    ``people``: none, all, some or agreed; ``saliency`` ISNet's probability."""
    shape = people.selfie.shape
    if shows == "none":
        return np.zeros(shape, np.uint8)
    posed = people.pose_mask >= 0.5
    selfie = people.selfie >= 0.5
    salient = saliency >= SALIENT
    if shows == "agreed":  # two independent teachers agreeing; one alone leaves it unsure
        label = np.where(selfie | salient, IGNORE_INDEX, 0).astype(np.uint8)
        label[posed | (selfie & salient)] = 1
        return label
    if not people.persons:
        return np.full(shape, IGNORE_INDEX, np.uint8)
    unsure = ~posed if shows == "some" else (selfie | salient) & ~posed
    label = posed.astype(np.uint8)
    label[unsure] = IGNORE_INDEX
    return label


def parts_map(person: np.ndarray, people: PeopleLabels) -> np.ndarray:
    """(H, W) uint8 part ids; all 255 without a found person (see the module docstring)."""
    if not people.persons or not (person == 1).any():
        return np.full(person.shape, IGNORE_INDEX, np.uint8)
    parts = np.where(person == 0, 0, IGNORE_INDEX).astype(np.uint8)
    for found in people.persons:
        mask = (found.mask >= 0.5) & (person == 1)
        parts[mask] = person_parts(mask, found.landmarks)[mask]
    return parts


def semseg_map(person: np.ndarray, saliency: np.ndarray, subject: str) -> np.ndarray:
    """(H, W) uint8 ``PHOTO_CLASSES`` ids. ``subject`` (the catalogue's ``semseg``):
    ``background``: 0 everywhere; a class name: that class where saliency >= 0.75, 255 in
    the band 0.25..0.75, 0 below; ``unknown``: 255. Then the person label on top: person
    where it is 1, 255 where it is 255."""
    if subject == "unknown":
        labels = np.full(person.shape, IGNORE_INDEX, np.uint8)
    elif subject == "background":
        labels = np.zeros(person.shape, np.uint8)
    else:
        low, high = SUBJECT_BAND
        labels = np.where(saliency >= high, PHOTO_CLASSES.index(subject), 0).astype(np.uint8)
        labels[(saliency > low) & (saliency < high)] = IGNORE_INDEX
    labels[person == 1] = PERSON
    labels[person == IGNORE_INDEX] = IGNORE_INDEX
    return labels
