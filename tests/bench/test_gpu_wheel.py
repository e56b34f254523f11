"""The GPU runbook's wheel transport (bench/gpu_wheel.py): parts that fit one device call,
received in any order, joined into the same bytes; and one onnxruntime-gpu release named by the
check, the Dockerfile and the compose GPU profile."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from bench import gpu_wheel
from tests.monitoring.test_compose import resolved_config
from tests.monitoring.test_dockerfile import stage_lines

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def wheel_cli(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_wheel.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_parts_received_in_any_order_join_to_the_same_bytes(tmp_path):
    wheel = tmp_path / "some.whl"
    wheel.write_bytes(bytes(range(256)) * (14 * MIB // 1024) + b"tail")  # 3.5 MiB and 4 bytes
    printed = wheel_cli("split", str(wheel), str(tmp_path / "parts"), "--part-mib", "1")
    assert "4 device calls" in printed
    stash = tmp_path / "device" / "stash"
    for index in (2, 0, 3):
        printed = wheel_cli("receive", str(tmp_path / "parts" / f"part{index}"), str(stash))
    assert "missing [1]" in printed
    with pytest.raises(SystemExit, match=r"parts \[1\] are missing"):
        gpu_wheel.join(stash, tmp_path / "joined")
    wheel_cli("receive", str(tmp_path / "parts" / "part1"), str(stash))
    joined = Path(wheel_cli("join", str(stash), str(tmp_path / "joined")).split()[1])
    assert joined.read_bytes() == wheel.read_bytes()
    manifest = json.loads((stash / gpu_wheel.MANIFEST).read_text())
    assert manifest["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    (stash / "wheel.part3").write_bytes(b"damaged")
    assert gpu_wheel.held_parts(stash)[2] == [3]


def test_parts_fit_one_call_beside_the_traveling_tree(tmp_path):
    tree = gpu_wheel.traveling_tree_bytes(REPO)
    assert tree > (REPO / "demo" / "ckpt.pt").stat().st_size  # tracked files count
    part = gpu_wheel.part_mib_beside(tree)
    assert part * MIB + tree <= (gpu_wheel.CALL_LIMIT_MIB - gpu_wheel.MARGIN_MIB) * MIB
    assert (part + 1) * MIB + tree > (gpu_wheel.CALL_LIMIT_MIB - gpu_wheel.MARGIN_MIB) * MIB
    with pytest.raises(SystemExit, match="leave large files out"):
        gpu_wheel.part_mib_beside(61 * MIB)
    ignored = REPO / ".gpu" / "probe-ignored"  # the runbook's folder does not travel by itself
    listed = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(ignored)])
    assert listed.returncode == 0


def test_one_onnxruntime_gpu_release_everywhere():
    """The check's wheel is the release the serving lock pins, which both Docker variants
    (and so compose's GPU profile) install."""
    version = gpu_wheel.ONNXRUNTIME_GPU_VERSION
    assert f"onnxruntime_gpu-{version}-cp312-" in gpu_wheel.WHEEL_NAME
    assert re.fullmatch(r"[0-9a-f]{64}", gpu_wheel.WHEEL_SHA256)
    for lock in ("serve.txt", "full.txt"):
        pinned = re.search(r"^onnxruntime-gpu==(\S+)", (REPO / "requirements" / lock).read_text(),
                           flags=re.M)  # fmt: skip
        assert pinned and pinned.group(1) == version, lock
    installs = [run for run in stage_lines("builder", "RUN") if "pip install" in run]
    assert installs and "-r requirements/serve.txt" in installs[0]
    gpu = resolved_config("gpu")["services"]["server-gpu"]["build"]
    assert gpu["args"]["VARIANT"] == "cuda" and gpu["target"] == "runtime"
    pyproject = (REPO / "pyproject.toml").read_text()
    serve = re.search(r'"(onnxruntime-gpu[^"]*)"', pyproject).group(1)
    assert Requirement(serve).specifier.contains(version)  # the serve extra admits it
