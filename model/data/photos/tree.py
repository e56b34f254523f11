"""The built set's layout on disk, shared by the builder and the reader.

::

    OUT/manifest.jsonl          one ``PhotoRecord`` per image, as JSON, in id order
    OUT/splits/{train,val}.txt  the ids of each split
    OUT/build.json              what was built: packages, counts, timings, teachers' agreement
    OUT/items/<id>/image.png    RGB, longest side at most the build's --max-side
    OUT/items/<id>/<label>.png  one grey PNG per label (``LABELS``), the image's size
    OUT/items/<id>/teacher_*.png  raw teacher outputs (``TEACHER_MAPS``): HED's, the selfie
                                mask's and pose's probabilities as round(255 p), and pose's
                                persons as an index map (i + 1 on the i-th person)
    OUT/items/<id>/meta.json    written last: the image's sha256, pose landmarks, timings
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ("semseg", "parts", "saliency", "edges", "person")
TEACHER_MAPS = ("teacher_hed", "teacher_selfie", "teacher_pose", "teacher_persons")
SPLITS = ("train", "val")
KINDS = ("photo", "frame", "composite")
MANIFEST = "manifest.jsonl"
BUILD = "build.json"
META = "meta.json"


@dataclass
class PhotoRecord:
    """One image of the set: where it came from, its licence, its split."""

    id: str
    kind: str  # photo, frame (of a video) or composite (stamps on a photo)
    source: str  # the package's key (``packages.PACKAGES``)
    version: str
    member: str  # the file inside the package (composites: the background's id)
    licence: str
    author: str
    sha256: str  # of the source file (composites: of their image.png)
    original_size: list[int]  # [width, height] of the source
    size: list[int]  # [width, height] as stored
    group: str  # near-duplicates share one; a group is never split
    people: str  # the catalogue's: none, all, some, agreed
    semseg: str  # the catalogue's: background, a class, unknown (composites: stamps)
    split: str = ""
    frame: int | None = None  # a video's frame number
    stamps: list[dict] = field(default_factory=list)  # composites: the pasted stamps

    @classmethod
    def from_json(cls, line: str) -> PhotoRecord:
        return cls(**json.loads(line))

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def item_dir(root: Path, item_id: str) -> Path:
    return root / "items" / item_id


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, optimize=False, compress_level=6)


def read_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"photo set: missing {path}")
    return np.asarray(Image.open(path))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_manifest(root: Path, records: list[PhotoRecord]) -> None:
    records = sorted(records, key=lambda record: record.id)
    (root / MANIFEST).write_text("".join(record.to_json() + "\n" for record in records))
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        ids = [record.id for record in records if record.split == split]
        (root / "splits" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def read_manifest(root: Path) -> list[PhotoRecord]:
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no photo set at {root} (missing {MANIFEST})")
    return [PhotoRecord.from_json(line) for line in path.read_text().splitlines() if line]
