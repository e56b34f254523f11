"""bench/gpu_check.py's rehearsal: on a machine without CUDA the check runs every step on the
CPU provider with small sizes (a tiny checkpoint in place of the demo's, one random size), and
writes the JSON and markdown that a GPU run will write. It runs as the GPU runbook's last call
does, through bench/gpu_device.sh, in a Python without pydantic (tests/bench/without_pydantic)
that gets it from the carried wheels only: here rebuilt from this environment's installed
pydantic and its requirements (this Python is 3.11, the device's wheels are cp312)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.gpu_wheel import WHEELS
from tests.export.tiny_export import write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
WITHOUT_PYDANTIC = Path(__file__).resolve().parent / "without_pydantic"
LAYOUTS = {(1, 1), (1, 5), (16, 1), (16, 5)}
# The rehearsal exports and times ViT-S graphs on this CPU: minutes, and more on a loaded
# machine (over 480 s, the check's default budget, with two training processes on its two
# cores), so bounds with room: no timing may be skipped for the deadline here.
REHEARSAL_LIMIT_S = 900
pytestmark = pytest.mark.timeout(REHEARSAL_LIMIT_S + 360)
CARRIED = [wheel.project for wheel in WHEELS if wheel.project != "onnxruntime-gpu"]
"""The rehearsal runs this environment's onnxruntime (CPU): the other wheels travel."""


def wheel_of_installed(project: str, folder: Path) -> Path:
    """A wheel rebuilt from an installed distribution's files (its RECORD), named with the tag
    its WHEEL file records."""
    dist = importlib.metadata.distribution(project)
    files = [file for file in dist.files if file.suffix != ".pyc" and ".." not in file.parts]
    info = next(file.parent for file in files if file.parent.name.endswith(".dist-info"))
    tag = next(
        line.split(": ")[1]
        for line in dist.read_text("WHEEL").splitlines()
        if line.startswith("Tag: ")
    )
    path = folder / f"{info.name.removesuffix('.dist-info')}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(dist.locate_file(file), str(file))
    return path


def split_carried_wheels(root: Path) -> list[Path]:
    """The carried wheels, split into 1 MiB parts as bench/gpu_wheel.py does for the device."""
    wheels = root / "wheels"
    wheels.mkdir()
    for project in CARRIED:
        wheel_of_installed(project, wheels)
    command = [
        sys.executable,
        "-m",
        "bench.gpu_wheel",
        "split",
        str(wheels),
        str(root / "parts"),
        "--part-mib",
        "1",
    ]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=60)
    return sorted((root / "parts").glob("part*"), key=lambda part: int(part.name[4:]))


def without_pydantic(site: Path | None = None) -> dict[str, str]:
    """The environment of a Python without pydantic; ``site``: the carried wheels' install."""
    paths = [str(path) for path in (site, WITHOUT_PYDANTIC) if path]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-check")
    checkpoint = write_tiny_checkpoint(root / "tiny.pt")
    *first, last = split_carried_wheels(root)
    stash, site, out = root / "stash", root / "site", root / "out"
    for part in first:  # the runbook's earlier calls, one part each
        subprocess.run(
            [sys.executable, "-m", "bench.gpu_wheel", "receive", str(part), str(stash)],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=60,
        )
    env = {
        **without_pydantic(),
        "GPU_PYTHON": sys.executable,
        "GPU_STASH": str(stash),
        "GPU_SITE": str(site),
    }
    command = [
        "bash",
        "bench/gpu_device.sh",
        str(last),
        str(out),
        "--device",
        "cpu",
        "--checkpoint",
        str(checkpoint),
        "--sizes",
        "vits",
        "--jobs",
        "2",
        "--repeats",
        "1",
        "--budget-s",
        str(REHEARSAL_LIMIT_S),
    ]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=REHEARSAL_LIMIT_S + 300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), out, done.stdout, site


def test_pydantic_comes_from_the_carried_wheels_only(rehearsal):
    data, _, stdout, site = rehearsal
    assert Path(data["environment"]["pydantic_file"]).is_relative_to(site)
    for project in CARRIED:
        assert data["environment"]["carried"][project] == importlib.metadata.version(project)
    assert f"pydantic {importlib.metadata.version('pydantic')} {site}" in stdout
    hidden = subprocess.run(
        [sys.executable, "-c", "import pydantic"],
        env=without_pydantic(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "No module named 'pydantic'" in hidden.stderr  # the simulation hides the venv's


def test_every_export_and_graph_is_checked_against_the_cpu_provider(rehearsal):
    data = rehearsal[0]
    assert data["environment"]["device"] == "cpu" and data["environment"]["small"]
    assert data["passed"] and not data.get("errors")
    exports = {(e["model"], e["precision"]): e for e in data["exports"]}
    assert set(exports) == {(m, p) for m in ("demo", "vits") for p in ("fp32", "fp16")}
    for export in exports.values():
        assert set(export["graphs"]) == {"dense", "sparse"}
        assert export["provider_graph"]["CUDAExecutionProvider"] == "sparse"
    strict = [row for row in data["parity"] if row["variant"] == "strict"]
    graphs = {(r["model"], r["precision"], r["graph"]) for r in strict}
    assert len(graphs) == 8 and len(strict) == 8 * 5  # export/check.py's 4 layouts + a batch
    assert all(r["passed"] and r["router_identical"] and r["gating"] for r in strict)
    tf32 = [row for row in data["parity"] if row["variant"] == "tf32"]
    assert {r["precision"] for r in tf32} == {"fp32"} and not any(r["gating"] for r in tf32)
    for row in data["placement"]:  # the rehearsal's target is the CPU provider itself
        assert set(row["nodes"]) == {"CPUExecutionProvider"} and row["memcpy_nodes"] == 0


def test_timings_cover_batches_tasks_precisions_and_graphs(rehearsal):
    data = rehearsal[0]
    strict = [row for row in data["timing"] if row["variant"] == "strict"]
    for model in ("demo", "vits"):
        for precision in ("fp32", "fp16"):
            for graph in ("dense", "sparse"):
                rows = [
                    r
                    for r in strict
                    if (r["model"], r["precision"], r["graph"]) == (model, precision, graph)
                ]
                assert {(r["batch"], r["tasks"]) for r in rows} == LAYOUTS
                assert all(r["ms"] > 0 and r["host_ms"] > 0 and r["gflop"] > 0 for r in rows)
                gflop = {(r["batch"], r["tasks"]): r["gflop"] for r in rows}
                assert gflop[(16, 5)] > gflop[(16, 1)] > gflop[(1, 1)]
                assert all(r["tokens"] == 16 * r["streams"] for r in rows)  # 32 px, patch 8
    assert all(r["precision"] == "fp32" for r in data["timing"] if r["variant"] == "tf32")
    assert data["reference_gemm"]["tflops"]["float32"] > 0


def test_markdown_is_written_and_the_speed_table_printed_last(rehearsal):
    _, out, stdout, _ = rehearsal
    markdown = (out / "gpu_check.md").read_text()
    for section in ("What ran", "Exports", "Parity", "Every timed row", "Speed"):
        assert f"## {section}" in markdown
    printed = [line for line in stdout.strip().splitlines() if line.startswith("|")]
    speed = markdown.split("## Speed")[1].strip().splitlines()[2:]  # after its title line
    assert printed[-len(speed) :] == speed and len(speed) == 2 + 2 * len(LAYOUTS)


def test_the_check_imports_nothing_the_gpu_machine_lacks(rehearsal):
    """The GPU machine's Python has torch, onnx and numpy but not the server's packages, nor
    pydantic (the exporter's metadata schema needs it: it comes from the carried wheels)."""
    site = rehearsal[3]
    blocked = ("pydantic_settings", "fastapi", "starlette", "uvicorn", "orjson", "isal")
    probe = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
        "import bench.gpu_check, bench.gpu_wheel; "
        "assert 'server' not in {m.split('.')[0] for m in sys.modules}"
    )

    def run(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", probe],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    with_carried = run(without_pydantic(site))
    assert with_carried.returncode == 0, with_carried.stderr[-2000:]
    assert "No module named 'pydantic'" in run(without_pydantic()).stderr  # it needs them


def test_a_run_past_its_budget_or_with_a_broken_graph_says_so(tmp_path):
    from bench.gpu_check import Report
    from bench.gpu_runs import Plan, timings

    plan = Plan("cpu", tmp_path, warmup=1, repeats=1, parity_batch=1, gemm_size=8, deadline=0.0)
    label = {"model": "vitb", "precision": "fp16", "graph": "sparse", "variant": "strict"}
    skipped = timings(None, label, {"size": 32}, plan, [(16, 5), (1, 1)])  # nothing is run
    assert skipped == [{**label, "batch": 16, "tasks": 5, "skipped": "deadline"}]
    report = Report(tmp_path / "out", {"timing": skipped})
    report.add(
        "parity",
        {
            **label,
            "case": "one task",
            "map_error": {"semseg": 1e-5},
            "map_mean_error": {"semseg": 1e-6},
            "label_agreement": {"semseg": 1.0},
            "tokens_moved": 0.0,
            "gate_mass_error": 0.0,
            "failures": [],
            "passed": True,
            "router_identical": True,
            "gating": True,
        },
    )
    assert report.passed
    report.add("errors", {**label, "error": "CheckError: asked for CUDAExecutionProvider"})
    assert not report.passed
    report.save()
    markdown = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "skipped: deadline" in markdown and "CheckError: asked for" in markdown
