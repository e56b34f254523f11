"""Which samples a run reads: one function opens a split of the synthetic scenes or of a
PASCAL_MT tree, for training (``train_source``, ``val_source``), evaluation and the router
figures (``eval_source``, the command lines' ``--data``). Torch-free, like ``model.data``.
"""

from __future__ import annotations

from model.data.pascal import PascalContext
from model.data.synthetic import SyntheticScenes
from model.presets import DataConfig

SYNTHETIC = "synthetic"
SCENE_DATASETS = (SYNTHETIC, "scenes_and_photos")  # whose splits are synthetic scenes
SYNTHETIC_TRAIN_SCENES = 2**40  # scenes are rendered on demand: effectively unlimited

Source = SyntheticScenes | PascalContext
"""A sequence of ``Sample``s (``model.data``)."""


def split_source(data: DataConfig, split: str, size: int, count: int | None = None) -> Source:
    """The first ``count`` samples of ``split``; ``None``: all of them (synthetic: unlimited
    scenes of ``size`` pixels, PASCAL: the whole split). PASCAL also reads 0 as the whole split
    (its images keep their own sizes); synthetic scene ``i`` is the same whatever ``count``.
    ``scenes_and_photos``: its scenes (the photos join in ``model/data/mixed.py``)."""
    if data.dataset in SCENE_DATASETS:
        length = SYNTHETIC_TRAIN_SCENES if count is None else count
        return SyntheticScenes(size, length, seed=data.seed, split=split)
    if not data.root:
        raise ValueError("the pascal_context dataset needs --data ROOT")
    source = PascalContext(data.root, split)  # names a missing root or layout file
    if count:
        source.ids = source.ids[:count]
    return source


def train_source(data: DataConfig, size: int) -> Source:
    return split_source(data, "train", size)


def val_source(data: DataConfig, size: int) -> Source:
    """The held-out samples training evaluates on: ``val_size`` of them (PASCAL: 0 = all)."""
    return split_source(data, "val", size, data.val_size)


def data_config(data: str, seed: int = 0) -> DataConfig:
    """A command line's ``--data``: ``synthetic`` (scenes of ``seed``) or a PASCAL_MT root."""
    if data == SYNTHETIC:
        return DataConfig(SYNTHETIC, seed=seed)
    return DataConfig("pascal_context", root=data, seed=seed)


def eval_source(data: str, split: str, count: int, size: int, seed: int = 0) -> Source:
    """``synthetic`` scenes of a held-out split, or a PASCAL_MT split at ``data``."""
    config = data_config(data, seed)
    if config.dataset == SYNTHETIC and split == "train":
        raise ValueError("evaluate on a held-out synthetic split ('val' or 'test')")
    return split_source(config, split, size, count)
