"""Synthetic scenes and labelled photos in every batch (``DataConfig.dataset =
"scenes_and_photos"``): the scenes bring all five tasks with exact labels, the photos (the set
of ``model/data/photos``, its teachers' labels) the tasks they have labels for, 255 elsewhere,
so that losses skip what a photo lacks (normals always; parts without a person).

Which sample a batch position holds is a pure function of (seed, position), like every
source here: the first ``photos_per_batch`` positions of each batch are photos, the rest new
scenes. Half the photo positions (rounded down) draw from the photos that show people, the
others from all photos, each from a fresh permutation of its pool every epoch: people are in a
quarter of the training photos and a few percent of their pixels, and with uniform draws the
first model learned "a photo's salient object is an animal" from the composites' pasted
animals and called the astronaut one.

Photos are camera-size (up to 1024 px stored): ``PhotoCrop`` takes a random window of a random
scale (log-uniform from a close-up, where the window's shorter side is ``1 / CLOSEST`` of the
model's input, up to the whole photo) with the photo's own aspect, and resizes it to the
model's square input, as the server squashes a whole upload; so the model sees every photo at
many scales, and the served view (the whole photo) among them. On a photo with people, half
the windows (``PERSON_FOCUS``) hold a random person pixel, so close-ups show people too.
With ``paste_people`` > 0, that share of the crops of a photo the catalogue says shows nobody
get a person cut out of a training photo pasted on (``paste_person``: copy-paste augmentation),
at a random scale and place: the set has a handful of training photos with people against
scores of composites of pasted animals, and the model called people "animal". The pasted
person's semseg and parts come with it; its saliency and the band round its outline are left
unlabelled (255), since nobody knows what the teachers would say of the new picture. With
``nobody_parts`` the parts of such photos are labelled background instead of skipped, so the
parts head learns where nobody is (it had drawn limbs on the composites' animals).
Labels are made at the output size from the teachers' soft maps where the set keeps them:
saliency bilinear then > 0.5 (with ``soft_saliency``, the probability itself: a soft target),
edges by ``edge_label`` (HED's probability >= 0.5, thinned: the set's own edge rule, at the
model's resolution rather than the photo's, where nearest-neighbour sampling would break the
1-px lines); class maps nearest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from skimage.morphology import thin
from torch.utils.data import Dataset

from model.data.photos import PhotoSet
from model.data.photos.tree import item_dir, read_png
from model.data.sample import Sample
from model.data.transforms import (
    greyscale,
    horizontal_flip,
    photometric_distortion,
    resize_bilinear,
    resize_image,
    resize_nearest,
    to_tensors,
)
from model.tasks import IGNORE_INDEX, require_dataset

CLOSEST = 1.25  # a close-up window is upsampled by at most this much
FULL_VIEW = 0.25  # share of photo crops that are the whole photo (the served view)
PERSON_FOCUS = 0.5  # share of crops of a photo with people that hold a person pixel
HALF = 0.5
PASTED_HEIGHT = (0.2, 0.9)  # a pasted person's height, log-uniform, as a share of the crop's
SMALLEST_PERSON = 400  # pixels (as stored) a person needs to be cut out
OUTLINE = 2  # pixels each side of a pasted outline left unlabelled (edges)


@dataclass(frozen=True)
class PhotoMaps:
    """One photo as stored: the image, soft teacher maps in [0, 1], class maps."""

    image: np.ndarray  # (H, W, 3) uint8
    saliency: np.ndarray  # (H, W) float32 ISNet's probability
    hed: np.ndarray  # (H, W) float32 HED's probability
    semseg: np.ndarray  # (H, W) uint8 in the model's class ids, 255 = no label
    parts: np.ndarray  # (H, W) uint8, 255 = no label
    name: str
    person_pixels: np.ndarray  # (P,) flat indices of the pixels labelled person
    nobody: bool = False  # the catalogue says nobody is in it


@dataclass(frozen=True)
class PersonCutout:
    """One person (a connected region of person pixels) cut out of a photo: its bounding box."""

    image: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) bool, the person's pixels
    parts: np.ndarray  # (h, w) uint8, 255 = no label
    hed: np.ndarray  # (h, w) float32
    grounded: bool  # the region touches the photo's bottom: pasted standing on the crop's


class PhotoMapsSource:
    """The training photos of a set as ``PhotoMaps``, decoded once and kept (a few hundred
    photos of at most 1024 px: about 5.5 MB each). ``nobody_parts``: label the parts of
    photos with nobody in them background (else 255, skipped)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        semseg_classes: tuple[str, ...],
        nobody_parts: bool = False,
    ) -> None:
        self.photos = PhotoSet(root, split, semseg_classes=semseg_classes)
        self.root = Path(root)
        self.person = semseg_classes.index("person") if "person" in semseg_classes else None
        self.nobody_parts = nobody_parts
        self._cache: dict[int, PhotoMaps] = {}

    @property
    def with_people(self) -> tuple[int, ...]:
        """Indices of the photos the catalogue says show people (all or some)."""
        return tuple(i for i, r in enumerate(self.photos.records) if r.people != "none")

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> PhotoMaps:
        if index not in self._cache:
            self._cache[index] = self._read(index)
        return self._cache[index]

    def _read(self, index: int) -> PhotoMaps:
        sample = self.photos[index]  # the class maps renamed to the model's ids
        folder = item_dir(self.root, self.photos.records[index].id)
        soft = {
            name: read_png(folder / f"{name}.png").astype(np.float32) / 255.0
            for name in ("saliency", "teacher_hed")
        }
        person = np.flatnonzero(sample.semseg == self.person) if self.person is not None else []
        nobody = self.photos.records[index].people == "none"
        parts = sample.parts
        if nobody and self.nobody_parts:
            parts = np.zeros_like(parts)  # PASCAL's part 0 is the background
        return PhotoMaps(
            sample.image,
            soft["saliency"],
            soft["teacher_hed"],
            sample.semseg,
            parts,
            sample.name,
            np.asarray(person, np.int64),
            nobody,
        )

    def person_cutouts(self) -> tuple[tuple[PersonCutout, ...], ...]:
        """The persons of at least ``SMALLEST_PERSON`` pixels of each photo with people, a
        tuple per photo (a video frame holds many small ones: drawn per photo, then person)."""
        if self.person is None:
            return ()
        per_photo = (self._cutouts(self[index]) for index in self.with_people)
        return tuple(cutouts for cutouts in per_photo if cutouts)

    def _cutouts(self, photo: PhotoMaps) -> tuple[PersonCutout, ...]:
        regions, _ = ndimage.label(photo.semseg == self.person)
        cutouts = []
        for number, box in enumerate(ndimage.find_objects(regions), start=1):
            mask = regions[box] == number
            if mask.sum() >= SMALLEST_PERSON:
                grounded = box[0].stop == photo.image.shape[0]
                cutouts.append(
                    PersonCutout(photo.image[box], mask, photo.parts[box], photo.hed[box], grounded)
                )
        return tuple(cutouts)


def edge_label(hed: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HED's probability (H, W) -> {0, 1} edges of ``size``: >= 0.5, thinned to 1 px. When
    shrinking, each output pixel takes the largest probability under its footprint (a maximum
    filter, then bilinear sampling): averaging would fade a thin line below 0.5, and sampling
    alone would step over it."""
    factors = (hed.shape[0] / size[0], hed.shape[1] / size[1])
    footprint = tuple(max(1, int(np.ceil(f))) for f in factors)
    if footprint != (1, 1):
        hed = ndimage.maximum_filter(hed, size=footprint)
    return thin(resize_bilinear(hed, size) >= HALF).astype(np.uint8)


def crop_window(
    height: int,
    width: int,
    size: int,
    rng: np.random.Generator,
    focus: tuple[int, int] | None = None,
    full_view: float = FULL_VIEW,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random window with the photo's aspect (``PhotoCrop``);
    with ``focus`` (row, column), a window that holds that pixel; ``full_view``: the share of
    windows that are the whole photo."""
    closest = min(1.0, size / CLOSEST / min(height, width))
    fraction = 1.0
    if rng.random() >= full_view:
        fraction = float(np.exp(rng.uniform(np.log(closest), 0.0)))
    rows, cols = max(1, round(height * fraction)), max(1, round(width * fraction))
    if focus is None:
        top = int(rng.integers(0, height - rows + 1))
        return top, int(rng.integers(0, width - cols + 1)), rows, cols
    top = int(np.clip(focus[0] - rng.integers(0, rows), 0, height - rows))
    left = int(np.clip(focus[1] - rng.integers(0, cols), 0, width - cols))
    return top, left, rows, cols


def _resized_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask resized with PIL's bilinear filter (no aliasing when shrinking), > 0.5."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize(size[::-1], Image.Resampling.BILINEAR)) >= 128


def _pasted_size(cutout: PersonCutout, side: int, rng: np.random.Generator) -> tuple[int, int]:
    """(rows, cols) of a cut-out pasted on a ``side`` x ``side`` crop: its height a
    log-uniform share ``PASTED_HEIGHT`` of the crop's, enlarged at most ``CLOSEST`` times, as
    wide as the crop at most."""
    height, width = cutout.mask.shape
    share = np.exp(rng.uniform(*np.log(PASTED_HEIGHT)))
    scale = min(share * side / height, CLOSEST, side / width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def paste_person(
    sample: Sample, cutout: PersonCutout, person_id: int, rng: np.random.Generator
) -> Sample:
    """``sample`` with ``cutout`` pasted on at a random scale and place (module docstring):
    semseg person and the cut-out's parts under it; saliency unlabelled under it and edges
    unlabelled ``OUTLINE`` pixels either side of its outline."""
    side = sample.image.shape[0]
    rows, cols = _pasted_size(cutout, side, rng)
    top = side - rows if cutout.grounded else int(rng.integers(0, side - rows + 1))
    left = int(rng.integers(0, side - cols + 1))
    mask = np.zeros((side, side), bool)
    mask[top : top + rows, left : left + cols] = _resized_mask(cutout.mask, (rows, cols))
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[top : top + rows, left : left + cols] = resize_image(cutout.image, (rows, cols))
    parts = np.full((side, side), IGNORE_INDEX, np.uint8)
    parts[top : top + rows, left : left + cols] = resize_nearest(cutout.parts, (rows, cols))
    edges = np.zeros((side, side), np.uint8)
    edges[top : top + rows, left : left + cols] = edge_label(cutout.hed, (rows, cols))
    outline = ndimage.binary_dilation(mask, iterations=OUTLINE) & ~ndimage.binary_erosion(
        mask, iterations=OUTLINE
    )
    return replace(
        sample,
        image=np.where(mask[..., None], canvas, sample.image),
        semseg=np.where(mask, np.uint8(person_id), sample.semseg),
        parts=np.where(mask, parts, sample.parts),
        saliency=np.where(mask, np.uint8(IGNORE_INDEX), sample.saliency),
        edges=np.where(outline, np.uint8(IGNORE_INDEX), np.where(mask, edges, sample.edges)),
    )


class PhotoCrop:
    """A ``PhotoMaps`` -> a ``Sample`` of ``size`` x ``size``: random window (module
    docstring), flip, photometric distortion; normals never labelled. With ``cutouts`` (per
    photo, ``PhotoMapsSource.person_cutouts``) and ``paste_people`` > 0, that share of the
    crops of photos with nobody get one pasted on: a random photo's, then a random person.
    ``grey``: the share of crops turned black and white; ``full_view``: of whole-photo windows;
    ``soft_saliency``: the saliency label is ISNet's probability (float32), not binarised."""

    def __init__(
        self,
        size: int,
        flip: bool = True,
        photometric: bool = True,
        cutouts: tuple[tuple[PersonCutout, ...], ...] = (),
        paste_people: float = 0.0,
        person_id: int | None = None,
        grey: float = 0.0,
        full_view: float = FULL_VIEW,
        soft_saliency: bool = False,
    ) -> None:
        if paste_people and (not cutouts or person_id is None):
            raise ValueError("pasting people needs person cut-outs and the person class id")
        self.size, self.flip, self.photometric = size, flip, photometric
        self.cutouts, self.paste_people, self.person_id = cutouts, paste_people, person_id
        self.grey, self.full_view = grey, full_view
        self.soft_saliency = soft_saliency

    def _saliency(self, probability: np.ndarray) -> np.ndarray:
        """ISNet's probability at the output size -> the label: binarised at 0.5, or kept."""
        if self.soft_saliency:
            return probability.astype(np.float32)
        return (probability > HALF).astype(np.uint8)

    def image(self, photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Only the image (H, W, 3) of a random window (no labels made), randomly flipped."""
        window = self._window(photo, rng)
        image = resize_image(np.ascontiguousarray(photo[window]), (self.size, self.size))
        return image[:, ::-1].copy() if self.flip and rng.random() < 0.5 else image

    def _window(
        self, image: np.ndarray, rng: np.random.Generator, people: np.ndarray | None = None
    ) -> tuple[slice, slice]:
        focus = None
        if people is not None and len(people) and rng.random() < PERSON_FOCUS:
            focus = divmod(int(people[rng.integers(0, len(people))]), image.shape[1])
        top, left, rows, cols = crop_window(*image.shape[:2], self.size, rng, focus, self.full_view)
        return slice(top, top + rows), slice(left, left + cols)

    def __call__(self, photo: PhotoMaps, rng: np.random.Generator) -> Sample:
        window = self._window(photo.image, rng, photo.person_pixels)
        out = (self.size, self.size)
        sample = Sample(
            image=resize_image(np.ascontiguousarray(photo.image[window]), out),
            semseg=resize_nearest(photo.semseg[window], out),
            parts=resize_nearest(photo.parts[window], out),
            saliency=self._saliency(resize_bilinear(photo.saliency[window], out)),
            normals=np.zeros((*out, 3), np.float32),
            normals_valid=np.zeros(out, bool),
            edges=edge_label(photo.hed[window], out),
            name=photo.name,
        )
        if not (sample.parts != IGNORE_INDEX).any():  # the crop missed the person: no label
            sample = replace(sample, parts=np.full(out, IGNORE_INDEX, np.uint8))
        if photo.nobody and self.paste_people and rng.random() < self.paste_people:
            photo_cutouts = self.cutouts[int(rng.integers(0, len(self.cutouts)))]
            cutout = photo_cutouts[int(rng.integers(0, len(photo_cutouts)))]
            sample = paste_person(sample, cutout, self.person_id, rng)
        if self.flip and rng.random() < 0.5:
            sample = horizontal_flip(sample)
        if self.photometric:
            sample = replace(sample, image=photometric_distortion(sample.image, rng))
        if self.grey and rng.random() < self.grey:
            sample = replace(sample, image=greyscale(sample.image))
        return sample


class MixedDataset(Dataset):
    """Batch position -> a scene or a photo (module docstring), as ``to_tensors`` dicts.

    ``scenes``: a sample source (``SyntheticScenes``) and ``scene_transform`` its augmentation;
    photos through ``PhotoCrop``. Randomness as ``MultiTaskDataset``'s: one torch draw per item.
    """

    def __init__(
        self,
        scenes,
        scene_transform,
        photos: PhotoMapsSource,
        photo_transform: PhotoCrop,
        batch: int,
        photos_per_batch: int,
        tasks: tuple[str, ...],
        seed: int = 0,
    ) -> None:
        if not 0 < photos_per_batch <= batch or not len(photos):
            raise ValueError(
                f"{photos_per_batch} photos per batch of {batch}, {len(photos)} photos"
            )
        self.scenes, self.scene_transform = scenes, scene_transform
        self.photos, self.photo_transform = photos, photo_transform
        self.batch, self.per_batch, self.tasks, self.seed = batch, photos_per_batch, tasks, seed
        people = photos.with_people
        # (pool of photo indices, its photo positions per batch): people first, then all
        self.pools = [(people, photos_per_batch // 2 if people else 0)]
        self.pools.append((tuple(range(len(photos))), photos_per_batch - self.pools[0][1]))
        self._orders: dict[tuple[int, int], np.ndarray] = {}  # (pool, epoch) -> permutation

    def __len__(self) -> int:
        return len(self.scenes)

    def which(self, position: int) -> tuple[str, int]:
        """("photo", photo index) or ("scene", scene index) of a batch position."""
        step, slot = divmod(position, self.batch)
        if slot >= self.per_batch:
            return "scene", step * (self.batch - self.per_batch) + slot - self.per_batch
        pool = 0 if slot < self.pools[0][1] else 1
        members, per_step = self.pools[pool]
        drawn = step * per_step + slot - (self.pools[0][1] if pool else 0)
        epoch, offset = divmod(drawn, len(members))
        if (pool, epoch) not in self._orders:
            self._orders = {  # keep one epoch per pool: positions come in order
                key: order for key, order in self._orders.items() if key[0] != pool
            }
            rng = np.random.default_rng([self.seed, 1, pool, epoch])
            self._orders[(pool, epoch)] = rng.permutation(len(members))
        return "photo", members[int(self._orders[(pool, epoch)][offset])]

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        kind, index = self.which(position)
        rng = np.random.default_rng([int(torch.randint(0, 2**62, (1,))), position])
        if kind == "photo":
            sample = self.photo_transform(self.photos[index], rng)
        else:
            sample = self.scene_transform(self.scenes[index], rng)
        return to_tensors(sample, self.tasks)


def photo_classes(dataset: str) -> tuple[str, ...]:
    """The semseg classes photos are renamed into: the model's."""
    return require_dataset(dataset).semseg_classes
