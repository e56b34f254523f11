"""Splits: whole groups, every source represented, reproducible, video frames kept apart."""

from model.data.photos.catalog import PHOTOS
from model.data.photos.gather import photo_id
from model.data.photos.split import VIDEO_GAP, assign_splits
from model.data.photos.tree import PhotoRecord


def record(item_id, group, source="opencv-doc", people="none", kind="photo", frame=None):
    return PhotoRecord(
        item_id,
        kind,
        source,
        "1",
        item_id,
        "CC0-1.0",
        "a",
        "0",
        [1, 1],
        [1, 1],
        group,
        people,
        "background",
        frame=frame,
    )


def catalogue_records() -> list[PhotoRecord]:
    records = []
    for entry in PHOTOS:
        item_id = photo_id(entry)
        group = f"{entry.package}-{entry.group}" if entry.group else item_id
        records.append(record(item_id, group, entry.package, entry.people))
    records += [
        record(f"f{i}", f"v{i // 100}", kind="frame", people="all", frame=i)
        for i in range(0, 800, 20)
    ]
    return records


def test_groups_are_never_split_and_each_source_of_several_holds_some_out():
    records = assign_splits(catalogue_records())
    split_of_group = {}
    for r in records:
        assert split_of_group.setdefault(r.group, r.split) == r.split, r.group
    for source in {r.source for r in records}:
        groups = {r.group for r in records if r.source == source}
        splits = {r.split for r in records if r.source == source}
        # a source of one photo (a library's sample portrait) can only train
        assert splits == ({"train", "val"} if len(groups) >= 2 else {"train"}), source
    with_people = [r for r in records if r.people != "none" and r.kind == "photo"]
    assert {"train", "val"} <= {r.split for r in with_people}


def test_the_split_is_the_same_every_time_and_about_a_fifth():
    first = {r.id: r.split for r in assign_splits(catalogue_records())}
    second = {r.id: r.split for r in assign_splits(catalogue_records()[::-1])}
    assert first == second
    assert 0.1 < sum(s == "val" for s in first.values()) / len(first) < 0.35


def test_training_frames_next_to_validation_frames_are_dropped():
    records = assign_splits(catalogue_records())
    frames = [r for r in records if r.kind == "frame"]
    val = [r.frame for r in frames if r.split == "val"]
    assert val and len(frames) < 40
    for r in frames:
        if r.split == "train":
            assert min(abs(r.frame - v) for v in val) > VIDEO_GAP
