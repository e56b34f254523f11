"""The whole set in one call: fetch the packages, gather the photos, split them, make the
composites, run the teachers, measure their agreement, write the manifest and ``build.json``
(counts, every step's wall-clock time, each teacher's images per second). Rerunning it
resumes: fetched archives are kept, labelled images are skipped."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from model.data.photos.agreement import agreement
from model.data.photos.catalog import PHOTOS
from model.data.photos.composites import STAMPS_PACKAGE, list_stamps, make_composites
from model.data.photos.gather import gather, photo_id
from model.data.photos.labelling import label_all, relabel
from model.data.photos.packages import PACKAGES, fetch_all
from model.data.photos.split import assign_splits
from model.data.photos.tree import (
    BUILD,
    META,
    PhotoRecord,
    item_dir,
    read_manifest,
    write_manifest,
)
from model.teachers.files import MEDIAPIPE_PYTHON, prepare_teachers
from model.teachers.runner import Teachers

DEFAULT_MAX_SIDE = 1024


class Stopwatch:
    """Wall-clock seconds of each named step, in order."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.steps: dict[str, float] = {}
        self.log = log
        self.start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.steps[name] = round(now - self.start - sum(self.steps.values()), 1)
        self.log(f"{name}: {self.steps[name]} s")


def teacher_speeds(root: Path, records: list[PhotoRecord]) -> dict:
    """Per teacher: images, seconds and images per second, from every item's ``meta.json``
    (so a resumed build still counts the images labelled before)."""
    seconds: Counter = Counter()
    images: Counter = Counter()
    for record in records:
        meta = json.loads((item_dir(root, record.id) / META).read_text())
        for teacher, spent in meta["seconds"].items():
            if spent > 0:
                seconds[teacher] += spent
                images[teacher] += 1
    return {
        teacher: {
            "images": images[teacher],
            "seconds": round(seconds[teacher], 1),
            "images_per_second": round(images[teacher] / seconds[teacher], 3),
        }
        for teacher in sorted(seconds)
    }


def counts(records: list[PhotoRecord]) -> dict:
    by_split = Counter((r.split, r.kind) for r in records)
    people = Counter(r.split for r in records if r.people != "none")
    return {
        split: {
            **{kind: by_split[split, kind] for kind in ("photo", "frame", "composite")},
            "with_people": people[split],
        }
        for split in ("train", "val")
    }


def prune(out: Path, records: list[PhotoRecord]) -> list[str]:
    """Remove item folders the manifest does not list (frames dropped by the split, items
    of an older catalogue); returns their ids."""
    keep = {record.id for record in records}
    stale = sorted(p.name for p in (out / "items").iterdir() if p.name not in keep)
    for item_id in stale:
        shutil.rmtree(item_dir(out, item_id))
    return stale


def log_line(line: str) -> None:
    print(line, flush=True)


def build(
    cache: Path,
    out: Path,
    max_side: int = DEFAULT_MAX_SIDE,
    threads: int = 0,
    mediapipe_python: Path = MEDIAPIPE_PYTHON,
    log: Callable[[str], None] = log_line,
) -> dict:
    """Build the set from the registries into ``out`` (see the module docstring)."""
    watch = Stopwatch(log)
    unpacked = fetch_all(cache)
    files = prepare_teachers(cache, mediapipe_python)
    watch.lap("fetch")
    records = assign_splits(gather(unpacked, out, max_side))
    watch.lap("gather")
    records += make_composites(records, list_stamps(unpacked[STAMPS_PACKAGE]), out)
    write_manifest(out, records)
    prune(out, records)
    watch.lap("composites")
    with Teachers(files, threads) as teachers:
        labelled = label_all(teachers, records, out, log)
    watch.lap("label")
    summary = {
        "packages": {p.key: {"version": p.version, "sha256": p.sha256} for p in PACKAGES.values()},
        "max_side": max_side,
        "counts": counts(records),
        "labelled_now": labelled,
        "teachers": teacher_speeds(out, records),
        "agreement": agreement(out, records),
    }
    watch.lap("agreement")
    summary["seconds"] = watch.steps
    (out / BUILD).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


def relabel_set(out: Path) -> dict:
    """Labels again from the stored teacher outputs (no teacher runs): the catalogue's current
    ``semseg`` tags into the manifest, every item relabelled, the agreement measured again
    into ``build.json``. A change of a photo's ``people`` needs the teachers again (pose runs
    on tiles only where people are): delete its ``meta.json`` and build."""
    records = read_manifest(out)
    tags = {photo_id(entry): entry.semseg for entry in PHOTOS}
    for record in records:
        if record.kind == "photo":
            record.semseg = tags.get(record.id, record.semseg)
    write_manifest(out, records)
    for record in records:
        relabel(record, out)
    path = out / BUILD
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary["agreement"] = agreement(out, records)
    path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary["agreement"]
