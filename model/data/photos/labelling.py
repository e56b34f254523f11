"""Run the teachers on one image of the tree and write its labels (``labels.py`` says what
each one means). Resumable: an item whose ``meta.json`` records its image's sha256 is done."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.data.photos.labels import (
    edge_map,
    parts_map,
    person_map,
    probability_png,
    semseg_map,
)
from model.data.photos.tree import META, PhotoRecord, item_dir, read_png, sha256_bytes, write_png
from model.teachers.people import PeopleLabels, Person
from model.teachers.runner import Teachers


def image_digest(image: np.ndarray) -> str:
    return sha256_bytes(np.ascontiguousarray(image).tobytes())


def is_labelled(folder: Path, image: np.ndarray) -> bool:
    meta = folder / META
    return meta.is_file() and json.loads(meta.read_text()).get("image_sha256") == image_digest(
        image
    )


def person_index(people: PeopleLabels) -> np.ndarray:
    """(H, W) uint8: i + 1 on the pixels of pose's i-th person (its mask >= 0.5), else 0."""
    index = np.zeros(people.selfie.shape, np.uint8)
    for number, person in enumerate(people.persons, start=1):
        index[(person.mask >= 0.5) & (index == 0)] = number
    return index


def write_people_labels(folder: Path, record: PhotoRecord, people: PeopleLabels, saliency):
    write_png(folder / "teacher_selfie.png", probability_png(people.selfie))
    write_png(folder / "teacher_pose.png", probability_png(people.pose_mask))
    write_png(folder / "teacher_persons.png", person_index(people))
    person = person_map(people, record.people, saliency)
    write_png(folder / "person.png", person)
    write_png(folder / "parts.png", parts_map(person, people))
    write_png(folder / "semseg.png", semseg_map(person, saliency, record.semseg))


def label_item(teachers: Teachers, record: PhotoRecord, out: Path) -> dict:
    """Every label of ``record``'s image; returns (and writes last) its ``meta.json``."""
    folder = item_dir(out, record.id)
    image = read_png(folder / "image.png")
    height, width = image.shape[:2]
    first = {name: len(times) for name, times in teachers.timings.items()}
    saliency = teachers.saliency(image)
    write_png(folder / "saliency.png", probability_png(saliency))
    edges = teachers.edges(image)
    write_png(folder / "teacher_hed.png", probability_png(edges))
    write_png(folder / "edges.png", edge_map(edges))
    persons = []
    if record.kind != "composite":  # a composite's person, parts and semseg are exact
        tiles = record.people != "none"
        people = teachers.people(folder / "image.png", height, width, tiles)
        write_people_labels(folder, record, people, saliency)
        persons = [{"landmarks": p.landmarks.round(2).tolist()} for p in people.persons]
    seconds = {
        name: round(sum(times[first.get(name, 0) :]), 3) for name, times in teachers.timings.items()
    }
    meta = {"image_sha256": image_digest(image), "persons": persons, "seconds": seconds}
    (folder / META).write_text(json.dumps(meta))
    return meta


def label_all(
    teachers: Teachers, records: list[PhotoRecord], out: Path, log: Callable[[str], None]
) -> int:
    """Label every record not labelled yet; returns how many were labelled now."""
    done = 0
    for number, record in enumerate(records, start=1):
        folder = item_dir(out, record.id)
        if is_labelled(folder, read_png(folder / "image.png")):
            continue
        meta = label_item(teachers, record, out)
        done += 1
        log(f"[{number}/{len(records)}] {record.id}: {meta['seconds']}")
    return done


def stored_people(folder: Path) -> PeopleLabels:
    """The MediaPipe outputs an item's folder keeps (selfie, persons, landmarks), back as
    ``PeopleLabels``: each person's mask is its stored pixels (probability 0 or 1)."""
    selfie = read_png(folder / "teacher_selfie.png").astype(np.float32) / 255.0
    index = read_png(folder / "teacher_persons.png")
    meta = json.loads((folder / META).read_text())
    persons = [
        Person((index == number).astype(np.float32), np.array(p["landmarks"], np.float32))
        for number, p in enumerate(meta["persons"], start=1)
    ]
    return PeopleLabels(selfie, persons)


def relabel(record: PhotoRecord, out: Path) -> None:
    """Recompute a labelled item's labels from its stored teacher outputs, without running
    any teacher (after a change to ``labels.py``, ``parts.py`` or the catalogue's tags)."""
    folder = item_dir(out, record.id)
    hed = read_png(folder / "teacher_hed.png").astype(np.float32) / 255.0
    write_png(folder / "edges.png", edge_map(hed))
    if record.kind != "composite":
        saliency = read_png(folder / "saliency.png").astype(np.float32) / 255.0
        write_people_labels(folder, record, stored_people(folder), saliency)
