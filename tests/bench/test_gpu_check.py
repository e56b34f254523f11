"""bench/gpu_check.py's rehearsal: on a machine without CUDA the check runs every step on the
CPU provider with small sizes (a tiny checkpoint in place of the demo's, one random size), and
writes the JSON and markdown that a GPU run will write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.export.tiny_export import write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
LAYOUTS = {(1, 1), (1, 5), (16, 1), (16, 5)}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-check")
    checkpoint = write_tiny_checkpoint(root / "tiny.pt")
    out = root / "out"
    command = [sys.executable, "bench/gpu_check.py", str(out), "--device", "cpu", "--checkpoint",
               str(checkpoint), "--sizes", "vits", "--jobs", "2", "--repeats", "1"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), out, done.stdout


def test_every_export_and_graph_is_checked_against_the_cpu_provider(rehearsal):
    data, _, _ = rehearsal
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
    data, _, _ = rehearsal
    strict = [row for row in data["timing"] if row["variant"] == "strict"]
    for model in ("demo", "vits"):
        for precision in ("fp32", "fp16"):
            for graph in ("dense", "sparse"):
                rows = [r for r in strict if (r["model"], r["precision"], r["graph"]) ==
                        (model, precision, graph)]  # fmt: skip
                assert {(r["batch"], r["tasks"]) for r in rows} == LAYOUTS
                assert all(r["ms"] > 0 and r["host_ms"] > 0 and r["gflop"] > 0 for r in rows)
                gflop = {(r["batch"], r["tasks"]): r["gflop"] for r in rows}
                assert gflop[(16, 5)] > gflop[(16, 1)] > gflop[(1, 1)]
                assert all(r["tokens"] == 16 * r["streams"] for r in rows)  # 32 px, patch 8
    assert all(r["precision"] == "fp32" for r in data["timing"] if r["variant"] == "tf32")
    assert data["reference_gemm"]["tflops"]["float32"] > 0


def test_markdown_is_written_and_the_speed_table_printed_last(rehearsal):
    _, out, stdout = rehearsal
    markdown = (out / "gpu_check.md").read_text()
    for section in ("What ran", "Exports", "Parity", "Every timed row", "Speed"):
        assert f"## {section}" in markdown
    printed = [line for line in stdout.strip().splitlines() if line.startswith("|")]
    speed = markdown.split("## Speed")[1].strip().splitlines()[2:]  # after its title line
    assert printed[-len(speed) :] == speed and len(speed) == 2 + 2 * len(LAYOUTS)


def test_the_check_imports_nothing_the_gpu_machine_lacks():
    """The GPU machine's Python has torch, onnx and numpy but not the server's packages."""
    blocked = ("pydantic", "pydantic_settings", "fastapi", "starlette", "uvicorn", "orjson", "isal")
    probe = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
             "import bench.gpu_check, bench.gpu_wheel; "
             "assert 'server' not in {m.split('.')[0] for m in sys.modules}")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_run_past_its_budget_or_with_a_broken_graph_says_so(tmp_path):
    from bench.gpu_check import Report
    from bench.gpu_runs import Plan, timings

    plan = Plan("cpu", tmp_path, warmup=1, repeats=1, parity_batch=1, gemm_size=8, deadline=0.0)
    label = {"model": "vitb", "precision": "fp16", "graph": "sparse", "variant": "strict"}
    skipped = timings(None, label, {"size": 32}, plan, [(16, 5), (1, 1)])  # nothing is run
    assert skipped == [{**label, "batch": 16, "tasks": 5, "skipped": "deadline"}]
    report = Report(tmp_path / "out", {"timing": skipped})
    report.add("parity", {**label, "case": "one task", "map_error": {"semseg": 1e-5},
                          "map_mean_error": {"semseg": 1e-6}, "label_agreement": {"semseg": 1.0},
                          "tokens_moved": 0.0, "gate_mass_error": 0.0, "failures": [],
                          "passed": True, "router_identical": True, "gating": True})  # fmt: skip
    assert report.passed
    report.add("errors", {**label, "error": "CheckError: asked for CUDAExecutionProvider"})
    assert not report.passed
    report.save()
    markdown = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "skipped: deadline" in markdown and "CheckError: asked for" in markdown
