"""A contact sheet of the built set: one row per image, its photo and its labels, "no label"
(255) in grey. For the docs only photos whose licence allows committing are drawn
(``catalog.COMMITTABLE``, CC-BY with the author named in the row); ``--any-licence`` draws
any, for a look on the user's machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import binary_dilation

from model.data.photos.catalog import COMMITTABLE
from model.data.photos.tree import PhotoRecord, item_dir, read_png
from model.tasks import IGNORE_INDEX, PARTS_PALETTE, PHOTO_PALETTE

COLUMNS = ("image", "saliency", "edges", "person", "parts", "semseg")
UNLABELLED = (128, 128, 128)
TILE = 200
CAPTION = 28


def coloured(labels: np.ndarray, palette) -> np.ndarray:
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = palette
    table[IGNORE_INDEX] = UNLABELLED
    return table[labels]


def column_picture(folder: Path, column: str) -> np.ndarray:
    """(H, W, 3) uint8 picture of one label of the item in ``folder``."""
    values = read_png(folder / f"{column}.png")
    if column == "image":
        return values
    if column == "saliency":
        return np.repeat(values[..., None], 3, axis=2)
    if column == "edges":  # 1-pixel lines, thickened so that a thumbnail keeps them
        lines = binary_dilation(values == 1, iterations=1).astype(np.uint8) * 255
        return np.repeat(lines[..., None], 3, axis=2)
    if column == "person":
        return coloured(values, [(0, 0, 0), (255, 255, 255)])
    return coloured(values, PARTS_PALETTE if column == "parts" else PHOTO_PALETTE)


def caption(record: PhotoRecord) -> str:
    return f"{record.id} ({record.split}) - {record.author}, {record.licence}"


def contact_sheet(root: Path, records: list[PhotoRecord], out: Path, any_licence: bool) -> int:
    """Write the sheet of ``records`` to ``out``; returns the rows drawn."""
    rows = [r for r in records if any_licence or r.licence in COMMITTABLE]
    if not rows:
        raise ValueError("no image with a committable licence among the chosen ones")
    sheet = Image.new("RGB", (TILE * len(COLUMNS), (TILE + CAPTION) * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, record in enumerate(rows):
        top = row * (TILE + CAPTION)
        for col, column in enumerate(COLUMNS):
            picture = Image.fromarray(column_picture(item_dir(root, record.id), column))
            picture.thumbnail((TILE - 4, TILE - 4), Image.Resampling.LANCZOS)
            sheet.paste(picture, (col * TILE + 2, top + CAPTION))
            draw.text((col * TILE + 4, top + 15), column, fill="black")
        draw.text((4, top + 2), caption(record), fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return len(rows)
