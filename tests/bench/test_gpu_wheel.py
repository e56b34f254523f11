"""The GPU runbook's wheel transport (bench/gpu_wheel.py): parts that fit one device call,
received in any order, joined into the same wheels; one onnxruntime-gpu release named by the
check, the Dockerfile and the compose GPU profile; and pydantic with all its requirements
carried at the serving lock's versions."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from bench import gpu_wheel
from tests.monitoring.test_compose import resolved_config
from tests.monitoring.test_dockerfile import stage_lines

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def wheel_cli(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_wheel.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_parts_received_in_any_order_join_to_the_same_wheels(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    big, small = wheels / "big-1-py3-none-any.whl", wheels / "small-1-py3-none-any.whl"
    big.write_bytes(bytes(range(256)) * (12 * MIB // 1024) + b"tail")  # 3 MiB and 4 bytes
    small.write_bytes(b"small" * 1000)  # rides in the big one's last part
    printed = wheel_cli("split", str(wheels), str(tmp_path / "parts"), "--part-mib", "1")
    assert "2 wheels" in printed and "4 device calls" in printed
    stash = tmp_path / "device" / "stash"
    for index in (2, 0, 3):
        printed = wheel_cli("receive", str(tmp_path / "parts" / f"part{index}"), str(stash))
    assert "missing [1]" in printed
    with pytest.raises(SystemExit, match=r"parts \[1\] are missing"):
        gpu_wheel.join(stash, tmp_path / "joined")
    wheel_cli("receive", str(tmp_path / "parts" / "part1"), str(stash))
    printed = wheel_cli("join", str(stash), str(tmp_path / "joined"))
    joined = [Path(line.split()[1]) for line in printed.splitlines()]
    assert [path.read_bytes() for path in joined] == [big.read_bytes(), small.read_bytes()]
    manifest = json.loads((stash / gpu_wheel.MANIFEST).read_text())
    assert manifest["wheels"][1]["sha256"] == hashlib.sha256(small.read_bytes()).hexdigest()
    (stash / "wheel.part3").write_bytes(b"damaged")
    assert gpu_wheel.held_parts(stash)[2] == [3]


def test_parts_fit_one_call_beside_the_traveling_tree(tmp_path):
    whole = gpu_wheel.traveling_tree_bytes(REPO)
    moved = sum((REPO / path).stat().st_size for path in gpu_wheel.SET_ASIDE)
    with pytest.raises(SystemExit, match="leave large files out .* set-aside"):
        gpu_wheel.part_bytes_beside(whole)  # the runbook's set-aside is needed
    tree = whole - moved
    assert tree > (REPO / "demo" / "ckpt.pt").stat().st_size  # tracked files count
    part = gpu_wheel.part_bytes_beside(tree)
    assert part + tree == (gpu_wheel.CALL_LIMIT_MIB - gpu_wheel.MARGIN_MIB) * MIB
    with pytest.raises(SystemExit, match="leave large files out"):
        gpu_wheel.part_bytes_beside(57 * MIB)
    ignored = REPO / ".gpu" / "probe-ignored"  # the runbook's folder does not travel by itself
    listed = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(ignored)])
    assert listed.returncode == 0


def test_set_aside_and_put_back_restore_the_tree(tmp_path):
    repo, aside = tmp_path / "repo", tmp_path / "aside"
    for index, relative in enumerate(gpu_wheel.SET_ASIDE[1:]):  # the first one absent
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_bytes(bytes([index]) * (index + 1))
    before = {path: path.read_bytes() for path in repo.rglob("*") if path.is_file()}
    printed = wheel_cli("set-aside", str(aside), "--repo", str(repo))
    assert len(printed.splitlines()) == len(gpu_wheel.SET_ASIDE) - 1
    assert not any(path.is_file() for path in repo.rglob("*"))
    with pytest.raises(SystemExit, match="put-back"):
        gpu_wheel.set_aside(repo, aside)  # never over an earlier set-aside
    gpu_wheel.put_back(repo, aside)
    assert {path: path.read_bytes() for path in repo.rglob("*") if path.is_file()} == before
    runbook = (REPO / "docs" / "benchmarks.md").read_text()
    assert "bench.gpu_wheel set-aside" in runbook and "bench.gpu_wheel put-back" in runbook


def lock_pins(lock: str) -> dict[str, str]:
    text = (REPO / "requirements" / lock).read_text()
    return dict(re.findall(r"^([\w.-]+)==(\S+)", text, flags=re.M))


def test_the_carried_wheels_are_pydantics_closure_at_the_serving_locks_versions():
    """Every requirement of pydantic (and of those), found from the installed metadata, travels,
    at the version the serving lock pins, as a wheel for the device's CPython 3.12."""
    carried = {wheel.project: wheel for wheel in gpu_wheel.WHEELS}
    todo, closure = ["pydantic"], set()
    while todo:
        project = todo.pop()
        closure.add(project)
        for line in importlib.metadata.requires(project) or []:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            if not requirement.marker or requirement.marker.evaluate({"extra": ""}):
                todo += [name] if name not in closure else []
    assert closure <= set(carried), closure - set(carried)
    pins = lock_pins("serve.txt")
    for project, wheel in carried.items():
        assert wheel.version == pins[project], project
        name, version, _, tags = parse_wheel_filename(wheel.file)
        assert (canonicalize_name(name), str(version)) == (project, wheel.version)
        for tag in tags:  # pure Python, or CPython 3.12 on x86-64 Linux
            assert tag.interpreter in ("py3", "cp312"), wheel.file
            assert tag.platform == "any" or re.fullmatch(r"manylinux.*_x86_64", tag.platform)
        assert re.fullmatch(r"[0-9a-f]{64}", wheel.sha256), project


def test_one_onnxruntime_gpu_release_everywhere():
    """The check's wheel is the release the serving lock pins, which both Docker variants
    (and so compose's GPU profile) install."""
    version = gpu_wheel.ONNXRUNTIME_GPU_VERSION
    wheel = gpu_wheel.WHEELS[0]
    assert (wheel.project, wheel.version) == ("onnxruntime-gpu", version)
    assert wheel.file.startswith(f"onnxruntime_gpu-{version}-cp312-")
    for lock in ("serve.txt", "full.txt"):
        assert lock_pins(lock)["onnxruntime-gpu"] == version, lock
    installs = [run for run in stage_lines("builder", "RUN") if "pip install" in run]
    assert installs and "-r requirements/serve.txt" in installs[0]
    gpu = resolved_config("gpu")["services"]["server-gpu"]["build"]
    assert gpu["args"]["VARIANT"] == "cuda" and gpu["target"] == "runtime"
    pyproject = (REPO / "pyproject.toml").read_text()
    serve = re.search(r'"(onnxruntime-gpu[^"]*)"', pyproject).group(1)
    assert Requirement(serve).specifier.contains(version)  # the serve extra admits it
