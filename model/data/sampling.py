"""Training batches: which samples each step of each process reads, and how they are augmented.

The batches are a pure function of (seed, step, rank), so a resumed run reads exactly the
batches an uninterrupted one would have read.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, Sampler

from model.data.mixed import MixedDataset, PhotoCrop, PhotoMapsSource, photo_classes
from model.data.sources import SCENE_DATASETS, train_source
from model.data.transforms import EvalTransform, MultiTaskDataset, TrainTransform, collate
from model.distributed import Processes
from model.presets import TrainConfig

PERSON_TASKS = frozenset({"semseg", "parts"})  # the tasks a pasted person is labelled for


class StepBatches(Sampler[list[int]]):
    """The index list of each step ``start .. stop-1`` for one process: a pure function of
    (seed, step, rank), so a resumed run sees exactly the batches it would have seen.
    Sample position p = (step * world + rank) * batch + j; with ``shuffle`` it goes through a
    fresh permutation of the dataset every epoch, else it is the index itself."""

    def __init__(
        self,
        length: int,
        batch: int,
        start: int,
        stop: int,
        seed: int,
        processes: Processes,
        shuffle: bool,
    ) -> None:
        self.length, self.batch, self.start, self.stop = length, batch, start, stop
        self.seed, self.processes, self.shuffle = seed, processes, shuffle
        self._permutation: tuple[int, np.ndarray] | None = None  # (epoch, order), reused

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            first = (step * self.processes.world + self.processes.rank) * self.batch
            yield [self._index(position) for position in range(first, first + self.batch)]

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.length)
        if not self.shuffle:
            return offset
        if self._permutation is None or self._permutation[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.length)
            self._permutation = (epoch, order)
        return int(self._permutation[1][offset])


def train_transform(augment: str, size: int) -> TrainTransform | EvalTransform:
    """``augment`` (``model.presets.AUGMENTATIONS``) as a transform to ``size`` pixels."""
    if augment == "benchmark":
        return TrainTransform(size)
    if augment == "flip":
        return TrainTransform(size, scale=(1.0, 1.0), flip=True, photometric=False)
    return EvalTransform(size)


def _dataset(config: TrainConfig, source, tasks: tuple[str, ...]):
    """Every batch position's sample as tensors: the source's, or scenes mixed with photos."""
    size = config.model.backbone.image_size
    scene_transform = train_transform(config.data.augment, size)
    if not config.data.photos_per_batch:
        return MultiTaskDataset(source, scene_transform, tasks)
    classes = photo_classes(config.model.dataset)
    photos = PhotoMapsSource(config.data.root, "train", classes, config.data.nobody_parts)
    per_batch = config.data.photos_per_batch
    # pasting serves the person tasks: a stage that trains neither (the photo recipe's stage 1,
    # saliency) would only lose the labels under the pasted person
    paste = config.data.paste_people if PERSON_TASKS & set(tasks) else 0.0
    cutouts = photos.person_cutouts() if paste else ()
    crop = PhotoCrop(
        size,
        cutouts=cutouts,
        paste_people=paste,
        person_id=photos.person,
        grey=config.data.grey_photos,
        full_view=config.data.full_views,
        soft_saliency=config.data.soft_saliency,
    )
    return MixedDataset(
        source,
        scene_transform,
        photos,
        crop,
        config.batch_size,
        per_batch,
        tasks,
        config.seed,
    )


def train_loader(
    config: TrainConfig, tasks: tuple[str, ...], start: int, stop: int, processes: Processes
) -> DataLoader:
    """The batches of steps ``start .. stop-1`` for this process, labelled for ``tasks``."""
    size = config.model.backbone.image_size
    source = train_source(config.data, size)
    dataset = _dataset(config, source, tasks)
    batches = StepBatches(
        len(source),
        config.batch_size,
        start,
        stop,
        config.seed,
        processes,
        shuffle=config.data.dataset not in SCENE_DATASETS,
    )
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=config.data.workers,
        persistent_workers=False,
        pin_memory=processes.device.type == "cuda",
    )
