"""Write the demo's sample images and, given a checkpoint, side-by-side prediction sheets.

    python -m demo.make_samples --out demo/samples                    # the committed inputs
    python -m demo.make_samples --out /tmp/vis --checkpoint demo/ckpt.pt   # look at the maps

Samples are held-out synthetic scenes (split ``test``, seed 7: never seen in training, whose
split is ``train``). A sheet has one row per image: the input, then per task the ground truth
and the prediction, coloured with the task registry's palettes (normals as RGB = (n+1)/2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.data import SyntheticScenes
from model.data.transforms import to_tensors
from model.evaluate import model_predictor
from model.tasks import IGNORE_INDEX, TASK_NAMES, TASKS, require_dataset

SEED, SPLIT = 7, "test"


def colourise(task: str, array: np.ndarray, dataset: str) -> np.ndarray:
    """A task map -> (H, W, 3) uint8: class ids via the palette, probabilities as grey,
    normals as (n+1)/2; ignored pixels grey 128."""
    kind = TASKS[task].kind
    if kind == "classes":
        palette = np.array(require_dataset(dataset).palette(task) + ((128, 128, 128),), np.uint8)
        ids = np.where(array == IGNORE_INDEX, len(palette) - 1, array)
        return palette[ids]
    if kind == "probability":
        grey = np.where(array == IGNORE_INDEX, 0.5, array)
        return np.repeat((grey[..., None] * 255).astype(np.uint8), 3, axis=2)
    return ((np.clip(array, -1, 1) + 1) * 127.5).astype(np.uint8)  # (H, W, 3)


def predicted_maps(checkpoint: Path, images: torch.Tensor) -> tuple[dict, str]:
    from model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    raw = model_predictor(model)(images)
    maps = {}
    for task, values in raw.items():
        kind = TASKS[task].kind
        if kind == "classes":
            maps[task] = values.argmax(1).numpy()
        elif kind == "probability":
            maps[task] = values[:, 0].numpy()
        else:
            maps[task] = values.permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    return maps, model.config.dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--checkpoint", type=Path, help="also write prediction sheets")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scenes = [
        SyntheticScenes(args.size, args.count, seed=SEED, split=SPLIT)[i] for i in range(args.count)
    ]
    for index, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(args.out / f"scene_{index}.png")
    if args.checkpoint is None:
        return
    images = torch.stack([to_tensors(scene, ())["image"] for scene in scenes])
    maps, dataset = predicted_maps(args.checkpoint, images)
    for index, scene in enumerate(scenes):
        truth = {t: scene.normals if t == "normals" else getattr(scene, t) for t in TASK_NAMES}
        cells = [scene.image]
        for task in maps:
            cells += [
                colourise(task, truth[task], dataset),
                colourise(task, maps[task][index], dataset),
            ]
        Image.fromarray(np.concatenate(cells, axis=1)).save(args.out / f"sheet_{index}.png")


if __name__ == "__main__":
    main()
