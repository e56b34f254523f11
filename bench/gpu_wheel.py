"""The wheels the GPU check needs on a GPU machine that has no network (docs/benchmarks.md, GPU
runbook): onnxruntime-gpu, and pydantic with its requirements (the exporter validates
``metadata.json`` with ``export/contract.py``; the machine has no pydantic). Download them here,
split them into parts that each fit one device call beside the working tree, and on the device
receive the parts one call at a time, then join and verify.

    python3 -m bench.gpu_wheel download .gpu/wheel          # here: pip download, sha256 checked
    python3 -m bench.gpu_wheel set-aside /tmp/gpu-aside     # here: SET_ASIDE out of the tree
    python3 -m bench.gpu_wheel split .gpu/wheel .gpu        # here: .gpu/part0 .. .gpu/partN
    python3 -m bench.gpu_wheel receive .gpu/part0 /tmp/ortgpu   # device: one part per call
    python3 -m bench.gpu_wheel join /tmp/ortgpu /tmp/ortgpu/wheel  # device: all parts -> wheels
    python3 -m bench.gpu_wheel put-back /tmp/gpu-aside      # here, afterwards

The parts are slices of the wheels laid end to end, so small wheels ride in a big one's last
part. Standard library only: it runs on the device before anything is installed there. Each
part folder holds the part and the manifest (sizes and sha256 of every wheel and every part),
so any call can tell which parts the device already holds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wheel:
    """One wheel the device installs: a release of the serving lock (requirements/serve.txt),
    built for the device's Python 3.12 on x86-64 (glibc 2.28 or newer)."""

    project: str
    version: str
    file: str
    sha256: str  # as PyPI serves it (pip checks the index's hash when it downloads)


ONNXRUNTIME_GPU_VERSION = "1.31.1"
"""The onnxruntime-gpu release the GPU check installs; the Dockerfile and the compose GPU
profile name the same one (tests/bench/test_gpu_wheel.py)."""
WHEELS = (
    Wheel(
        "onnxruntime-gpu",
        ONNXRUNTIME_GPU_VERSION,
        f"onnxruntime_gpu-{ONNXRUNTIME_GPU_VERSION}-cp312-cp312-manylinux_2_28_x86_64.whl",
        "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7",
    ),
    Wheel(
        "pydantic",
        "2.14.4",
        "pydantic-2.14.4-py3-none-any.whl",
        "653a2ad9f6d8858529c77c72717d0ea991d6c6837fe683246b2f4b2bbfc3fadc",
    ),
    Wheel(
        "pydantic-core",
        "2.50.5",
        "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "470bbc2495367f60d3ca849a8039e4c164701d10637e7743f4427d92651bdb6d",
    ),
    Wheel(
        "annotated-types",
        "0.8.0",
        "annotated_types-0.8.0-py3-none-any.whl",
        "f072f4d804ea359e4eaf198b1af7a8b0943881a87f31bb764f8bf219bb9419e0",
    ),
    Wheel(
        "typing-inspection",
        "0.4.5",
        "typing_inspection-0.4.5-py3-none-any.whl",
        "bc210535442b39e1bf2805e0c7a17dfd6a4ace760c84c7f7d16245d23a6b1c39",
    ),
    Wheel(
        "typing-extensions",
        "4.16.0",
        "typing_extensions-4.16.0-py3-none-any.whl",
        "481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8",
    ),
)
"""onnxruntime-gpu (its own requirements are the machine's: docs/benchmarks.md), then pydantic
and its requirements (its METADATA's Requires-Dist). typing-extensions travels although the
machine has one: pydantic 2.14.4 needs >= 4.16.0, and the machine's version is not known here."""
CALL_LIMIT_MIB = 64
"""What one device call carries at most: the working tree and every carried path together."""
MARGIN_MIB = 4
"""Left free in every call: the tree may grow a little between the split and the calls."""
MANIFEST = "manifest.json"
MIB = 1 << 20
SET_ASIDE = (
    "demo/model/model.dense.onnx",
    "demo/model/model.sparse.onnx",
    "demo/photo/model/model.dense.onnx",
    "demo/photo/model/model.sparse.onnx",
    "demo/photo/ckpt.pt",
)
"""Committed files the GPU check never reads (it re-exports the synthetic demo model from
demo/ckpt.pt), moved out of the tree while the device calls run: with them the tree is over
what one call carries."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def download(destination: Path) -> list[Path]:
    """pip download of every wheel of WHEELS into ``destination``; fails unless each one's
    sha256 is the recorded one."""
    destination.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "--platform",
        "manylinux_2_28_x86_64",
        "--platform",
        "manylinux_2_27_x86_64",
        "--platform",
        "manylinux_2_17_x86_64",
        "-d",
        str(destination),
        *(f"{wheel.project}=={wheel.version}" for wheel in WHEELS),
    ]
    subprocess.run(command, check=True)
    for wheel in WHEELS:
        if sha256(destination / wheel.file) != wheel.sha256:
            raise SystemExit(f"{destination / wheel.file}: sha256 differs from {wheel.sha256}")
    return [destination / wheel.file for wheel in WHEELS]


def traveling_tree_bytes(repo: Path) -> int:
    """Bytes of what a device call sends besides its carried paths: tracked files present in
    the working tree and untracked files git does not ignore."""
    listed = (
        subprocess.run(
            [
                "git",
                "-C",
                str(repo),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    paths = {repo / name for name in listed if name}
    return sum(path.lstat().st_size for path in paths if path.is_file() or path.is_symlink())


def part_bytes_beside(tree_bytes: int) -> int:
    """The largest part that fits one call beside a tree of ``tree_bytes`` with MARGIN_MIB to
    spare (in bytes: whole MiB would waste up to one per part, and so cost a call)."""
    part = (CALL_LIMIT_MIB - MARGIN_MIB) * MIB - tree_bytes
    if part < 4 * MIB:
        raise SystemExit(
            f"the working tree takes {tree_bytes / MIB:.1f} MiB of a call's "
            f"{CALL_LIMIT_MIB}: leave large files out of it first "
            "(python3 -m bench.gpu_wheel set-aside DIR moves the committed models out)"
        )
    return part


def _move_listed(origin: Path, destination: Path) -> list[Path]:
    """Move every ``SET_ASIDE`` file present under ``origin`` to the same path under
    ``destination``; returns the new paths."""
    moved = []
    for relative in SET_ASIDE:
        source, target = origin / relative, destination / relative
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            moved.append(target)
    return moved


def set_aside(repo: Path, aside: Path) -> list[Path]:
    """Move the present ``SET_ASIDE`` files of ``repo`` under ``aside``; returns where they
    went. Refuses, before moving anything, where an earlier set-aside was not put back."""
    for relative in SET_ASIDE:
        if (aside / relative).exists():
            raise SystemExit(f"{aside / relative} exists: put-back {aside} first")
    return _move_listed(repo, aside)


def put_back(repo: Path, aside: Path) -> list[Path]:
    """Undo ``set_aside``: the ``SET_ASIDE`` files under ``aside`` back to their places in
    ``repo``; returns the restored paths."""
    return _move_listed(aside, repo)


def split(wheels: list[Path], destination: Path, part_bytes: int) -> list[Path]:
    """``destination``/part<i>/ with ``wheel.part<i>`` and the manifest, one folder per call:
    slices of ``part_bytes`` of the wheels laid end to end, in the order given."""
    for stale in destination.glob("part*"):  # an earlier split's parts
        shutil.rmtree(stale)
    stream = b"".join(wheel.read_bytes() for wheel in wheels)  # a few hundred MiB at most
    parts = []
    for index, start in enumerate(range(0, len(stream), part_bytes)):
        folder = destination / f"part{index}"
        folder.mkdir(parents=True)
        path = folder / f"wheel.part{index}"
        path.write_bytes(stream[start : start + part_bytes])
        parts.append(path)
    manifest = {
        "wheels": [{"file": w.name, "size": w.stat().st_size, "sha256": sha256(w)} for w in wheels],
        "parts": [{"file": p.name, "size": p.stat().st_size, "sha256": sha256(p)} for p in parts],
    }
    for path in parts:
        (path.parent / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return parts


def held_parts(stash: Path) -> tuple[dict, list[int], list[int]]:
    """The manifest in ``stash`` and the indices of the parts it holds intact / lacks."""
    manifest = json.loads((stash / MANIFEST).read_text())
    held, missing = [], []
    for index, part in enumerate(manifest["parts"]):
        path = stash / part["file"]
        intact = path.is_file() and path.stat().st_size == part["size"]
        (held if intact and sha256(path) == part["sha256"] else missing).append(index)
    return manifest, held, missing


def receive(part_dir: Path, stash: Path) -> list[int]:
    """Copy one part (and the manifest) into ``stash``; returns the parts still missing."""
    stash.mkdir(parents=True, exist_ok=True)
    for path in part_dir.iterdir():
        shutil.copyfile(path, stash / path.name)
    manifest, held, missing = held_parts(stash)
    print(
        f"{len(manifest['wheels'])} wheels: holding parts {held} of {len(manifest['parts'])}; "
        f"missing {missing}",
        flush=True,
    )
    return missing


def join(stash: Path, destination: Path) -> list[Path]:
    """Every wheel of the manifest in ``stash``, cut from its parts into ``destination``,
    each verified against its sha256."""
    manifest, _, missing = held_parts(stash)
    if missing:
        raise SystemExit(f"parts {missing} are missing or damaged in {stash}: send them again")
    destination.mkdir(parents=True, exist_ok=True)
    stream = b"".join((stash / part["file"]).read_bytes() for part in manifest["parts"])
    wheels, start = [], 0
    for entry in manifest["wheels"]:
        wheel = destination / entry["file"]
        wheel.write_bytes(stream[start : start + entry["size"]])
        start += entry["size"]
        if sha256(wheel) != entry["sha256"]:
            raise SystemExit(f"{wheel}: joined sha256 differs from the manifest's")
        print(f"joined {wheel} ({os.path.getsize(wheel) / MIB:.1f} MiB, sha256 ok)", flush=True)
        wheels.append(wheel)
    return wheels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("download").add_argument("destination", type=Path)
    splitter = verbs.add_parser("split")
    splitter.add_argument("source", type=Path, help="a folder: every wheel in it, by name")
    splitter.add_argument("destination", type=Path)
    splitter.add_argument("--part-mib", type=int, help="default: what fits beside the tree")
    splitter.add_argument("--repo", type=Path, default=Path.cwd(), help="the checkout that travels")
    for verb in ("receive", "join"):
        sub = verbs.add_parser(verb)
        sub.add_argument("source", type=Path)
        sub.add_argument("destination", type=Path)
    for verb in ("set-aside", "put-back"):
        sub = verbs.add_parser(verb, help="the SET_ASIDE files out of the tree / back")
        sub.add_argument("aside", type=Path, help="a folder outside the checkout")
        sub.add_argument("--repo", type=Path, default=Path.cwd(), help="the checkout")
    args = parser.parse_args(argv)
    if args.verb in ("set-aside", "put-back"):
        move = set_aside if args.verb == "set-aside" else put_back
        print("\n".join(f"{args.verb} {path}" for path in move(args.repo, args.aside)))
    elif args.verb == "download":
        print("\n".join(str(path) for path in download(args.destination)))
    elif args.verb == "split":
        tree = traveling_tree_bytes(args.repo)
        part_bytes = args.part_mib * MIB if args.part_mib else part_bytes_beside(tree)
        wheels = sorted(args.source.glob("*.whl"))
        if not wheels:
            raise SystemExit(f"no wheels in {args.source}: download them first")
        parts = split(wheels, args.destination, part_bytes)
        total = sum(wheel.stat().st_size for wheel in wheels)
        print(
            f"{len(wheels)} wheels, {total / MIB:.1f} MiB; tree {tree / MIB:.1f} MiB + parts of "
            f"{part_bytes / MIB:.2f} MiB: {len(parts)} device calls"
        )
        for path in parts:
            print(f"  carry {path.parent}")
    elif args.verb == "receive":
        receive(args.source, args.destination)
    else:
        join(args.source, args.destination)
    return 0


if __name__ == "__main__":
    sys.exit(main())
