"""The catalogue: unique ids, known values, every committable licence spelled as used."""

from model.data.photos.catalog import COMMITTABLE, PHOTOS, STAMP_CLASSES
from model.data.photos.gather import SOURCE_PREFIX, photo_id
from model.data.photos.packages import PACKAGES
from model.tasks import PHOTO_CLASSES


def test_entries_are_unique_and_name_known_packages_and_classes():
    ids = [photo_id(entry) for entry in PHOTOS]
    assert len(ids) == len(set(ids))
    for entry in PHOTOS:
        assert entry.package in PACKAGES and entry.package in SOURCE_PREFIX
        assert entry.semseg in ("background", "unknown") or entry.semseg in PHOTO_CLASSES
    assert set(STAMP_CLASSES.values()) <= set(PHOTO_CLASSES)


def test_committable_photos_exist_with_people_among_them():
    committable = [e for e in PHOTOS if e.licence in COMMITTABLE]
    assert len(committable) >= 10
    assert any(e.people != "none" for e in committable)
    assert all(e.licence not in COMMITTABLE for e in PHOTOS if "GPL" in e.licence)
