"""The catalogue's photos and the video's frames, from the unpacked packages into the tree:
each one decoded to RGB, shrunk so that its longest side is at most ``max_side`` (never
enlarged) and written as ``items/<id>/image.png``, with its ``PhotoRecord``."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from model.data.photos.catalog import PHOTOS, VIDEO, VIDEO_GROUP, VIDEO_STEP, PhotoEntry
from model.data.photos.packages import PACKAGES, sha256_file
from model.data.photos.tree import PhotoRecord, item_dir, write_png

SOURCE_PREFIX = {
    "opencv-doc": "opencv",
    "lomiri-wallpapers-16.04": "lomiri",
    "mate-backgrounds": "mate",
    "plasma-workspace-wallpapers": "plasma",
    "scikit-image": "skimage",
    "ultralytics": "ultralytics",
    "matplotlib": "matplotlib",
    "insightface": "insightface",
    "face_recognition": "facerec",
}


def fit(image: Image.Image, max_side: int) -> Image.Image:
    """RGB, longest side at most ``max_side``: JPEGs decoded at a reduced DCT scale first
    (never below twice the target), then Lanczos."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image.convert("RGB")
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image.draft("RGB", (2 * target[0], 2 * target[1]))
    return image.convert("RGB").resize(target, Image.Resampling.LANCZOS)


def photo_id(entry: PhotoEntry) -> str:
    """``<source>-<name>``; a plasma wallpaper is named by its folder, not its size."""
    parts = entry.member.split("/")
    name = parts[-4] if entry.package == "plasma-workspace-wallpapers" else entry.name
    return f"{SOURCE_PREFIX[entry.package]}-{re.sub(r'[^A-Za-z0-9_-]', '_', name)}"


def _record(entry: PhotoEntry, item_id: str, sha256: str, original, size, group) -> PhotoRecord:
    return PhotoRecord(
        id=item_id,
        kind="photo",
        source=entry.package,
        version=PACKAGES[entry.package].version,
        member=entry.member,
        licence=entry.licence,
        author=entry.author,
        sha256=sha256,
        original_size=list(original),
        size=list(size),
        group=group,
        people=entry.people,
        semseg=entry.semseg,
    )


def gather_photo(entry: PhotoEntry, unpacked: Path, out: Path, max_side: int) -> PhotoRecord:
    path = unpacked / entry.member
    if not path.is_file():
        raise FileNotFoundError(f"{entry.package}: no {entry.member} in the package")
    item_id = photo_id(entry)
    with Image.open(path) as source:
        original = source.size
        image = fit(source, max_side)
    write_png(item_dir(out, item_id) / "image.png", np.asarray(image))
    group = f"{SOURCE_PREFIX[entry.package]}-{entry.group}" if entry.group else item_id
    return _record(entry, item_id, sha256_file(path), original, image.size, group)


def gather_frames(unpacked: Path, out: Path, max_side: int) -> list[PhotoRecord]:
    """Every ``VIDEO_STEP``-th frame of the catalogue's video, as photos of kind ``frame``."""
    path = unpacked / VIDEO.member
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open the video {path}")
    records, index, digest = [], 0, sha256_file(path)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % VIDEO_STEP == 0:
            item_id = f"opencv-vtest-f{index:04d}"
            source = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            image = fit(source, max_side)
            write_png(item_dir(out, item_id) / "image.png", np.asarray(image))
            group = f"opencv-vtest-{index // VIDEO_GROUP}"
            record = _record(VIDEO, item_id, digest, source.size, image.size, group)
            record.kind, record.frame = "frame", index
            records.append(record)
        index += 1
    capture.release()
    return records


def gather(unpacked: dict[str, Path], out: Path, max_side: int) -> list[PhotoRecord]:
    """Every catalogued photo and video frame, written under ``out``."""
    records = [gather_photo(e, unpacked[e.package], out, max_side) for e in PHOTOS]
    return records + gather_frames(unpacked[VIDEO.package], out, max_side)
