"""``python -m model.data.photos``: build the real-photo set, fetch the teachers, draw a sheet.

python -m model.data.photos build --cache /work/data/cache --out /work/data/photos
python -m model.data.photos fetch --cache .photo-cache --teachers-only
python -m model.data.photos relabel --out /work/data/photos
python -m model.data.photos sheet --out /work/data/photos --png docs/photos_sheet.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model.cli import run
from model.data.photos.build import DEFAULT_MAX_SIDE, build, relabel_set
from model.data.photos.packages import fetch_all
from model.data.photos.sheet import contact_sheet
from model.data.photos.tree import read_manifest
from model.teachers.files import MEDIAPIPE_PYTHON, prepare_teachers


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m model.data.photos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="fetch, gather, split, composite, label")
    make.add_argument("--cache", type=Path, required=True, help="package cache folder")
    make.add_argument("--out", type=Path, required=True, help="the set's folder (outside git)")
    make.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="stored size")
    make.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all)")
    make.add_argument("--mediapipe-python", type=Path, default=MEDIAPIPE_PYTHON)
    fetch = commands.add_parser("fetch", help="fetch and unpack the packages only")
    fetch.add_argument("--cache", type=Path, required=True)
    fetch.add_argument("--teachers-only", action="store_true", help="and make their models")
    again = commands.add_parser(
        "relabel", help="labels again from stored teacher outputs, agreement measured again"
    )
    again.add_argument("--out", type=Path, required=True, help="a built set's folder")
    sheet = commands.add_parser("sheet", help="a contact sheet of photos and labels (PNG)")
    sheet.add_argument("--out", type=Path, required=True, help="a built set's folder")
    sheet.add_argument("--png", type=Path, required=True)
    sheet.add_argument("--ids", default="", help="comma-separated ids (default: --split's)")
    sheet.add_argument("--split", default="val")
    sheet.add_argument("--any-licence", action="store_true", help="not only committable ones")
    return top


def main(argv: list[str] | None = None) -> object:
    args = parser().parse_args(argv)
    if args.command == "build":
        summary = build(args.cache, args.out, args.max_side, args.threads, args.mediapipe_python)
        print(json.dumps(summary, indent=1, ensure_ascii=False))
        return summary
    if args.command == "fetch":
        if args.teachers_only:
            return prepare_teachers(args.cache)
        return fetch_all(args.cache)
    if args.command == "relabel":
        measured = relabel_set(args.out)
        print(json.dumps(measured, indent=1))
        return measured
    records = read_manifest(args.out)
    wanted = [i for i in args.ids.split(",") if i]
    chosen = (
        [r for r in records if r.id in wanted]
        if wanted
        else [r for r in records if r.split == args.split]
    )
    rows = contact_sheet(args.out, chosen, args.png, args.any_licence)
    print(f"{args.png}: {rows} rows")
    return rows


def cli() -> None:
    run(main)


if __name__ == "__main__":
    cli()
