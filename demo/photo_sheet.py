"""A contact sheet of held-out photos with a model's five maps (and the teachers' saliency and
edges beside its own), for the docs: only photos whose licence allows committing them
(``model/data/photos/catalog.py``'s ``COMMITTABLE``; the row names author and licence).

    python -m demo.photo_sheet demo/photo/ckpt.pt --data /data/photos --out docs/photo_sheet.png

Maps are the model's on the whole photo resized to its input (what the server computes),
shown at the photo's aspect: semseg and parts in the registry's palettes, saliency and edges
grey, normals as RGB = (n + 1) / 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from demo.make_samples import colourise
from model.checkpoint import load_checkpoint
from model.data.photos.catalog import COMMITTABLE
from model.data.photos.tree import item_dir, read_manifest, read_png
from model.data.transforms import image_tensor, resize_image
from model.heads import postprocess
from model.tasks import TASKS

TILE = 220
CAPTION = 30
COLUMNS = (
    "photo",
    "semseg",
    "parts",
    "saliency",
    "teacher saliency",
    "edges",
    "teacher edges",
    "normals",
)


def model_maps(model, photo: np.ndarray) -> dict[str, np.ndarray]:
    """Each task's map at the model's input: class ids, probabilities, (h, w, 3) normals."""
    size = model.config.backbone.image_size
    with torch.no_grad():
        out = model.forward_tasks(
            image_tensor(resize_image(photo, (size, size)))[None], model.config.tasks
        )
    maps = {}
    for task, raw in out.maps.items():
        kind = TASKS[task].kind
        value = postprocess(kind, raw)[0]
        if kind == "classes":
            maps[task] = value.argmax(0).numpy().astype(np.uint8)
        elif kind == "probability":
            maps[task] = value[0].numpy()
        else:
            maps[task] = value.permute(1, 2, 0).numpy()
    return maps


def row_pictures(model, folder: Path) -> list[np.ndarray]:
    photo = read_png(folder / "image.png")
    maps = model_maps(model, photo)
    dataset = model.config.dataset
    teacher = {
        name: read_png(folder / f"{file}.png").astype(np.float32) / 255.0
        for name, file in (("teacher saliency", "saliency"), ("teacher edges", "teacher_hed"))
    }
    pictures = {
        "photo": photo,
        **{k: colourise("saliency", v, dataset) for k, v in teacher.items()},
    }
    pictures |= {task: colourise(task, value, dataset) for task, value in maps.items()}
    return [pictures[column] for column in COLUMNS]


def tile(picture: np.ndarray, aspect: float) -> Image.Image:
    """The picture resized to the photo's aspect, fitting the tile."""
    side = TILE - 4
    width, height = (side, round(side / aspect)) if aspect >= 1 else (round(side * aspect), side)
    return Image.fromarray(picture).resize((width, height), Image.Resampling.NEAREST)


def photo_sheet(checkpoint: Path, root: Path, split: str, out: Path) -> int:
    model = load_checkpoint(checkpoint)[0].eval()
    records = [r for r in read_manifest(root) if r.split == split and r.licence in COMMITTABLE]
    if not records:
        raise ValueError(f"no {split!r} photo with a committable licence in {root}")
    sheet = Image.new("RGB", (TILE * len(COLUMNS), (TILE + CAPTION) * len(records)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, record in enumerate(records):
        top = row * (TILE + CAPTION)
        aspect = record.size[0] / record.size[1]
        draw.text((4, top + 2), f"{record.id} - {record.author}, {record.licence}", fill="black")
        for col, picture in enumerate(row_pictures(model, item_dir(root, record.id))):
            sheet.paste(tile(picture, aspect), (col * TILE + 2, top + CAPTION))
            draw.text((col * TILE + 4, top + 16), COLUMNS[col], fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    return len(records)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the photo set's root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = photo_sheet(args.checkpoint, args.data, args.split, args.out)
    print(f"wrote {args.out}: {rows} photos")


if __name__ == "__main__":
    main()
