"""A tiny hybrid photo checkpoint and the photo tree it was configured for."""

from dataclasses import replace
from pathlib import Path

import pytest

from model.checkpoint import save_checkpoint
from model.presets import tiny
from model.tasks import SCENES_AND_PHOTOS
from model.trainer import new_model
from tests.model.photo_tree import mixed_data, write_photo_tree


@pytest.fixture
def photo_checkpoint(tmp_path) -> tuple[Path, Path]:
    """(checkpoint, photo tree root): an untrained tiny hybrid (EfficientNet-Lite0 patch
    embedding, ase adapters) saved as a stage-2 checkpoint with its recipe."""
    root = write_photo_tree(tmp_path / "photos")
    config = tiny()
    backbone = replace(config.model.backbone, patch_size=16, embed="efficientnet_lite0")
    model = replace(config.model, backbone=backbone, dataset=SCENES_AND_PHOTOS)
    config = replace(config, model=model, data=mixed_data(root))
    network = new_model(config, None)
    checkpoint = save_checkpoint(
        tmp_path / "ckpt.pt", network, extra={"train": config.to_dict(), "stage": "multi_task"}
    )
    return checkpoint, root
