"""Tux Paint's stamps (photographed objects cut out with alpha, GPL-2) pasted on the set's own
photos: real objects with exact masks, so semseg gets animal, vehicle and food pixels that
no teacher could label. Each stamp's folder names its class (``catalog.STAMP_CLASSES``).

A composite takes a photo that shows nobody and nothing of the photo classes (catalogue:
people ``none``, semseg ``background``), crops and resizes it to ``SIZE``, and pastes
``PER_COMPOSITE`` stamps of the same split, each 30-60 % of the image's height, flipped at
random, wholly inside. Its semseg is exact (the stamp's class where its alpha >= 0.5, later
stamps on top, background elsewhere); its person label is 0 and its parts all 255 (nobody
in it); saliency and edges come from the teachers, like any photo's. Stamps are split
between train and validation by their own hash; a composite uses its split's stamps on its
split's photos. Everything is drawn from a seeded generator: the same packages give the same
composites.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model.data.photos.catalog import STAMP_CLASSES, STAMP_DIR
from model.data.photos.packages import PACKAGES
from model.data.photos.split import SEED, VAL_SHARE
from model.data.photos.tree import SPLITS, PhotoRecord, item_dir, read_png, sha256_bytes, write_png
from model.tasks import IGNORE_INDEX, PHOTO_CLASSES

STAMPS_PACKAGE = "tuxpaint-stamps-default"
SIZE = (640, 480)  # (width, height) of a landscape composite; portrait ones are transposed
PER_COMPOSITE = 2
STAMP_HEIGHT = (0.3, 0.6)
SKIPPED_FOLDERS = ("cartoon", "toys")  # drawings; a teddy bear is no animal


@dataclass(frozen=True)
class Stamp:
    member: str  # path inside the package
    path: Path
    label: str  # a ``PHOTO_CLASSES`` name
    split: str


def stamp_class(relative: str) -> str | None:
    """The class of a stamp at ``relative`` (under ``STAMP_DIR``); None if not used."""
    if any(folder in relative.split("/")[:-1] for folder in SKIPPED_FOLDERS):
        return None
    for prefix in sorted(STAMP_CLASSES, key=len, reverse=True):
        if relative.startswith(prefix):
            return STAMP_CLASSES[prefix]
    return None


def stamp_split(member: str) -> str:
    rank = int(hashlib.sha256(f"{SEED}:{member}".encode()).hexdigest()[:8], 16) / 16**8
    return "val" if rank < VAL_SHARE else "train"


def list_stamps(unpacked: Path) -> list[Stamp]:
    stamps = []
    for path in sorted((unpacked / STAMP_DIR).rglob("*.png")):
        member = str(path.relative_to(unpacked))
        label = stamp_class(str(path.relative_to(unpacked / STAMP_DIR)))
        if label is not None:
            stamps.append(Stamp(member, path, label, stamp_split(member)))
    return stamps


def _crop_background(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A random crop of ``image`` with ``SIZE``'s aspect (portrait for portrait photos),
    60-100 % of the largest such crop, resized to ``SIZE``."""
    height, width = image.shape[:2]
    out_w, out_h = SIZE if width >= height else SIZE[::-1]
    fit = min(width / out_w, height / out_h) * rng.uniform(0.6, 1.0)
    crop_w, crop_h = round(out_w * fit), round(out_h * fit)
    x, y = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    crop = Image.fromarray(image[y : y + crop_h, x : x + crop_w])
    return crop.resize((out_w, out_h), Image.Resampling.LANCZOS)


def _scaled_stamp(stamp: Stamp, height: int, width: int, rng) -> Image.Image:
    """The stamp as premultiplied RGBa, 30-60 % of ``height`` tall, narrower than ``width``."""
    picture = Image.open(stamp.path).convert("RGBA").convert("RGBa")
    scale = rng.uniform(*STAMP_HEIGHT) * height / picture.height
    scale = min(scale, 0.9 * width / picture.width)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    picture = picture.resize(size, Image.Resampling.LANCZOS)
    return picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else picture


def compose(background: np.ndarray, stamps: list[Stamp], rng: np.random.Generator):
    """(image (H, W, 3) uint8, semseg (H, W) uint8, what was pasted where)."""
    canvas = np.asarray(_crop_background(background, rng), np.float32)
    height, width = canvas.shape[:2]
    semseg = np.zeros((height, width), np.uint8)
    pasted = []
    for stamp in stamps:
        picture = _scaled_stamp(stamp, height, width, rng)
        x = int(rng.integers(0, width - picture.width + 1))
        y = int(rng.integers(0, height - picture.height + 1))
        rgba = np.asarray(picture, np.float32)  # premultiplied: colour already times alpha
        alpha = rgba[..., 3:] / 255.0
        region = canvas[y : y + picture.height, x : x + picture.width]
        region[:] = rgba[..., :3] + region * (1.0 - alpha)
        semseg[y : y + picture.height, x : x + picture.width][alpha[..., 0] >= 0.5] = (
            PHOTO_CLASSES.index(stamp.label)
        )
        box = [x, y, x + picture.width, y + picture.height]
        pasted.append({"member": stamp.member, "class": stamp.label, "box": box})
    return np.round(canvas).clip(0, 255).astype(np.uint8), semseg, pasted


def _composite_record(item_id: str, split: str, background: PhotoRecord, image, pasted):
    package = PACKAGES[STAMPS_PACKAGE]
    return PhotoRecord(
        id=item_id,
        kind="composite",
        source=STAMPS_PACKAGE,
        version=package.version,
        member=background.id,
        licence=f"{package.licence} (stamps); {background.licence} (background)",
        author=f"Tux Paint stamps; {background.author}",
        sha256=sha256_bytes(image.tobytes()),  # of the RGB pixels (PNG bytes vary by zlib)
        original_size=list(background.size),
        size=[image.shape[1], image.shape[0]],
        group=background.group,
        people="none",
        semseg="stamps",
        split=split,
        stamps=pasted,
    )


def make_composites(
    records: list[PhotoRecord], stamps: list[Stamp], out: Path, seed: int = 0
) -> list[PhotoRecord]:
    """Every stamp pasted once, ``PER_COMPOSITE`` to a composite, on its split's photos; each
    composite's image, semseg, person and parts written under ``out``."""
    made = []
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_index])
        backgrounds = [
            r
            for r in records
            if r.split == split
            and r.kind == "photo"
            and (r.people, r.semseg) == ("none", "background")
        ]
        chosen = [stamps[i] for i in rng.permutation(len(stamps)) if stamps[i].split == split]
        for number, first in enumerate(range(0, len(chosen), PER_COMPOSITE)):
            background = backgrounds[int(rng.integers(len(backgrounds)))]
            pixels = read_png(item_dir(out, background.id) / "image.png")
            image, semseg, pasted = compose(pixels, chosen[first : first + PER_COMPOSITE], rng)
            item_id = f"composite-{split}-{number:03d}"
            folder = item_dir(out, item_id)
            write_png(folder / "image.png", image)
            write_png(folder / "semseg.png", semseg)
            write_png(folder / "person.png", np.zeros(semseg.shape, np.uint8))
            write_png(folder / "parts.png", np.full(semseg.shape, IGNORE_INDEX, np.uint8))
            made.append(_composite_record(item_id, split, background, image, pasted))
    return made
