"""The page's photo samples: held-out photos of the photo set whose licence allows committing
them (``model/data/photos/catalog.py``'s ``COMMITTABLE``), as JPEGs beside the demo's scenes,
with ``photos.md`` naming each one's source, author and licence.

    python -m demo.photo_samples --data /data/photos --out demo/samples

The photos are the set's stored images (longest side at most 1024 px) shrunk to ``--side``
and saved at JPEG quality 90: real camera-like uploads, small enough to commit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from model.data.photos.catalog import COMMITTABLE
from model.data.photos.tree import PhotoRecord, item_dir, read_manifest

HEADER = """# Photo samples

The page's real photos (beside the scenes of README.md). Written by

    python -m demo.photo_samples --data /data/photos --out demo/samples

from the photo set's held-out (`val`) split: the model never trained on them. The packages are
Debian's (lomiri-wallpapers-16.04) and PyPI's (scikit-image); the data card, docs/photos.md,
says how the set is built.

| file | source | author | licence |
| --- | --- | --- | --- |
"""


def sample_name(record: PhotoRecord) -> str:
    return record.id.split("-", 1)[-1].lower().replace("_", "-") + ".jpg"


def write_samples(root: Path, out: Path, side: int) -> list[str]:
    records = [r for r in read_manifest(root) if r.split == "val" and r.licence in COMMITTABLE]
    if not records:
        raise ValueError(f"no held-out photo with a committable licence in {root}")
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for record in records:
        picture = Image.open(item_dir(root, record.id) / "image.png").convert("RGB")
        picture.thumbnail((side, side), Image.Resampling.LANCZOS)
        name = sample_name(record)
        picture.save(out / name, quality=90, optimize=True)
        source = f"package `{record.source}` {record.version}, `{record.member}`"
        lines.append(f"| `{name}` | {source} | {record.author} | {record.licence} |")
    (out / "photos.md").write_text(HEADER + "\n".join(lines) + "\n")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the photo set's root")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--side", type=int, default=800, help="longest side of the JPEGs")
    args = parser.parse_args(argv)
    rows = write_samples(args.data, args.out, args.side)
    print(f"wrote {len(rows)} samples to {args.out}")


if __name__ == "__main__":
    main()
