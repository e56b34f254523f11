"""The onnxruntime-gpu wheel for a GPU machine that has no network (docs/benchmarks.md, GPU
runbook): download it here, split it into parts that each fit one device call beside the
working tree, and on the device receive the parts one call at a time, then join and verify.

    python3 bench/gpu_wheel.py download .gpu/wheel          # here: pip download, sha256 checked
    python3 bench/gpu_wheel.py split .gpu/wheel/WHEEL .gpu  # here: .gpu/part0 .. .gpu/partN
    python3 bench/gpu_wheel.py receive .gpu/part0 /tmp/ortgpu   # device: one part per call
    python3 bench/gpu_wheel.py join /tmp/ortgpu /tmp/ortgpu/wheel  # device: all parts -> wheel

Standard library only: it runs on the device before anything is installed there. Each part
folder holds the part and the manifest (sizes and sha256 of the wheel and of every part), so
any call can tell which parts the device already holds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ONNXRUNTIME_GPU_VERSION = "1.31.1"
"""The onnxruntime-gpu release the GPU check installs; the Dockerfile and the compose GPU
profile name the same one (tests/bench/test_gpu_check.py)."""
WHEEL_NAME = f"onnxruntime_gpu-{ONNXRUNTIME_GPU_VERSION}-cp312-cp312-manylinux_2_28_x86_64.whl"
"""The device's Python is 3.12 on x86-64 (glibc 2.28 or newer)."""
WHEEL_SHA256 = "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7"
"""sha256 of WHEEL_NAME as PyPI serves it (pip checks the index's hash when it downloads)."""
CALL_LIMIT_MIB = 64
"""What one device call carries at most: the working tree and every carried path together."""
MARGIN_MIB = 4
"""Left free in every call: the tree may grow a little between the split and the calls."""
MANIFEST = "manifest.json"
MIB = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def download(destination: Path) -> Path:
    """pip download of WHEEL_NAME into ``destination``; fails unless its sha256 is WHEEL_SHA256."""
    destination.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp",
               "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
               "--platform", "manylinux_2_17_x86_64", "-d", str(destination),
               f"onnxruntime-gpu=={ONNXRUNTIME_GPU_VERSION}"]  # fmt: skip
    subprocess.run(command, check=True)
    wheel = destination / WHEEL_NAME
    if sha256(wheel) != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 differs from {WHEEL_SHA256}")
    return wheel


def traveling_tree_bytes(repo: Path) -> int:
    """Bytes of what a device call sends besides its carried paths: tracked files present in
    the working tree and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    paths = {repo / name for name in listed if name}
    return sum(path.lstat().st_size for path in paths if path.is_file() or path.is_symlink())


def part_mib_beside(tree_bytes: int) -> int:
    """The largest whole-MiB part that fits one call beside a tree of ``tree_bytes``."""
    part = CALL_LIMIT_MIB - MARGIN_MIB - -(-tree_bytes // MIB)
    if part < 4:
        raise SystemExit(f"the working tree takes {tree_bytes / MIB:.1f} MiB of a call's "
                         f"{CALL_LIMIT_MIB}: leave large files out of it first")  # fmt: skip
    return part


def split(wheel: Path, destination: Path, part_mib: int) -> list[Path]:
    """``destination``/part<i>/ with ``wheel.part<i>`` and the manifest, one folder per call."""
    size, parts = wheel.stat().st_size, []
    for stale in destination.glob("part*"):  # an earlier split's parts
        shutil.rmtree(stale)
    with open(wheel, "rb") as source:
        for index in range(-(-size // (part_mib * MIB))):
            folder = destination / f"part{index}"
            folder.mkdir(parents=True)
            path = folder / f"wheel.part{index}"
            path.write_bytes(source.read(part_mib * MIB))
            parts.append(path)
    manifest = {
        "wheel": wheel.name, "size": size, "sha256": sha256(wheel),
        "parts": [{"file": p.name, "size": p.stat().st_size, "sha256": sha256(p)} for p in parts],
    }  # fmt: skip
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
    print(f"{manifest['wheel']}: holding parts {held} of {len(manifest['parts'])}; "
          f"missing {missing}", flush=True)  # fmt: skip
    return missing


def join(stash: Path, destination: Path) -> Path:
    """Concatenate every part in ``stash`` into ``destination``/<wheel>, verified."""
    manifest, _, missing = held_parts(stash)
    if missing:
        raise SystemExit(f"parts {missing} are missing or damaged in {stash}: send them again")
    destination.mkdir(parents=True, exist_ok=True)
    wheel = destination / manifest["wheel"]
    with open(wheel, "wb") as out:
        for part in manifest["parts"]:
            with open(stash / part["file"], "rb") as source:
                shutil.copyfileobj(source, out, MIB)
    if sha256(wheel) != manifest["sha256"]:
        raise SystemExit(f"{wheel}: joined sha256 differs from the manifest's")
    print(f"joined {wheel} ({os.path.getsize(wheel) / MIB:.1f} MiB, sha256 ok)", flush=True)
    return wheel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("download").add_argument("destination", type=Path)
    splitter = verbs.add_parser("split")
    splitter.add_argument("wheel", type=Path)
    splitter.add_argument("destination", type=Path)
    splitter.add_argument("--part-mib", type=int, help="default: what fits beside the tree")
    splitter.add_argument("--repo", type=Path, default=Path.cwd(), help="the checkout that travels")
    for verb in ("receive", "join"):
        sub = verbs.add_parser(verb)
        sub.add_argument("source", type=Path)
        sub.add_argument("destination", type=Path)
    args = parser.parse_args(argv)
    if args.verb == "download":
        print(download(args.destination))
    elif args.verb == "split":
        tree = traveling_tree_bytes(args.repo)
        part_mib = args.part_mib or part_mib_beside(tree)
        parts = split(args.wheel, args.destination, part_mib)
        print(f"tree {tree / MIB:.1f} MiB + parts of {part_mib} MiB: {len(parts)} device calls")
        for path in parts:
            print(f"  carry {path.parent}")
    elif args.verb == "receive":
        receive(args.source, args.destination)
    else:
        join(args.source, args.destination)
    return 0


if __name__ == "__main__":
    sys.exit(main())
