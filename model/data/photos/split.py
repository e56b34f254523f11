"""Train and validation splits: by whole group (a photo, or near-duplicates together), by
source, reproducibly. Within each source, groups with people and groups without are split
apart, ``VAL_SHARE`` of each (at least one when there are two or more) going to validation;
which ones is fixed by the sha256 of ``SEED`` and the group's name, so the same catalogue
gives the same split on every machine. A video's training frames within ``VIDEO_GAP``
frames of a validation frame are dropped: seconds apart, they would be near-duplicates."""

from __future__ import annotations

import hashlib
from collections import defaultdict

from model.data.photos.tree import PhotoRecord

VAL_SHARE = 0.2
SEED = "ase-photos-1"
VIDEO_GAP = 30  # frames (3 s of the 10 fps video)


def _rank(group: str) -> str:
    return hashlib.sha256(f"{SEED}:{group}".encode()).hexdigest()


def stratum(record: PhotoRecord) -> tuple[str, bool]:
    """(source, has people): a video is a source of its own."""
    source = f"{record.source}:{record.kind}" if record.kind == "frame" else record.source
    return source, record.people != "none"


def validation_groups(records: list[PhotoRecord]) -> set[str]:
    groups_by_stratum: dict[tuple[str, bool], set[str]] = defaultdict(set)
    for record in records:
        groups_by_stratum[stratum(record)].add(record.group)
    chosen = set()
    for groups in groups_by_stratum.values():
        count = round(VAL_SHARE * len(groups))
        count = max(count, 1) if len(groups) >= 2 else count
        chosen.update(sorted(groups, key=_rank)[:count])
    return chosen


def assign_splits(records: list[PhotoRecord]) -> list[PhotoRecord]:
    """Every record's ``split`` set to ``train`` or ``val``; the records to keep (the video's
    training frames next to validation ones left out)."""
    held_out = validation_groups(records)
    for record in records:
        record.split = "val" if record.group in held_out else "train"
    val_frames = [r.frame for r in records if r.kind == "frame" and r.split == "val"]
    return [record for record in records if not _beside(record, val_frames)]


def _beside(record: PhotoRecord, val_frames: list[int]) -> bool:
    if record.kind != "frame" or record.split != "train":
        return False
    return any(abs(record.frame - frame) <= VIDEO_GAP for frame in val_frames)
