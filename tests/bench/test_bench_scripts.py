"""The scripts behind docs/benchmarks.md's server tables run and report what the docs read from
them (tiny counts: this checks the scripts, not the speed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(module: str, *args: str) -> dict:
    """``python -m <module> <args>`` from the repository root: the JSON it prints."""
    command = [sys.executable, "-m", module, *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_bench_server_reports_every_level_against_the_model(tmp_path):
    out = tmp_path / "server.json"
    printed = run_script(
        "bench.bench_server",
        "--image",
        "96x160",
        "--requests",
        "4",
        "--seconds",
        "30",
        "--threads",
        "1",
        "--json",
        str(out),
    )
    assert json.loads(out.read_text()) == printed
    assert [level["concurrency"] for level in printed["server"]] == [1, 4, 16]
    for level in printed["server"]:
        assert level["requests"] == 4 and level["p50"] > 0
        spans = level["server_timing_p50_ms"]
        assert set(spans) == {"decode", "queue", "inference", "postprocess", "total"}
        assert spans["total"] >= spans["inference"] > 0
    assert printed["model_alone_ms"]["p50"] > 0 and printed["model_alone_cpu_ms_per_run"] > 0
    assert all(level["server_cpu_ms_per_request"] > 0 for level in printed["server"])  # /proc
    overhead = printed["overhead_at_c1"]
    assert set(overhead) == {"client", "server", "in_request", "times_model"}
    assert overhead["in_request"] > 0
    assert overhead["times_model"]["client"] > 0 and overhead["times_model"]["server"] > 0


def test_bench_server_reads_streamed_npz_at_model_size():
    printed = run_script(
        "bench.bench_server",
        "--image",
        "300x200",
        "--format",
        "npz",
        "--size",
        "model",
        "--requests",
        "3",
        "--concurrency",
        "1",
        "--threads",
        "1",
    )
    assert printed["query"] == "/predict?format=npz&size=model"
    (level,) = printed["server"]
    assert level["requests"] == 3 and level["response_bytes"] > 128 * 128 * 5
    assert printed["overhead_at_c1"]["times_model"]["client"] > 0


def test_bench_render_compares_every_path_on_the_same_maps():
    printed = run_script("bench.bench_render", "--sizes", "96x64,200x150", "--repeats", "1")
    sizes, kinds = ["96x64", "200x150"], {"classes", "probability", "vector"}
    restore = printed["restore"]
    assert {(row["size"], row["kind"]) for row in restore} == {(s, k) for s in sizes for k in kinds}
    for row in restore:
        assert row["wall_ms"] >= 0 and row["cpu_ms"] >= 0 and 0 <= row["equal_share"] <= 1
        if row["variant"] in ("definition", "ours"):  # ours is the definition, value for value
            assert row["equal_share"] == 1.0 and row["max_difference"] == 0
    variants = {row["variant"] for row in restore if row["kind"] == "vector"}
    assert variants == {"definition", "ours", "cv2", "uint8"}
    png = printed["png"]
    assert {row["task"] for row in png} == {"semseg", "parts", "saliency", "normals", "edges"}
    assert {row["task"] for row in png if row["encoder"] == "fpng"} == {"normals"}  # RGB only
    assert {row["encoder"] for row in png} == {"ours", "pil", "cv2", "zlib_ng", "fpng"}
    assert all(row["bytes"] > 0 for row in png)
    assert [row["size"] for row in printed["render"]] == sizes
    assert all(
        row["in_turn"]["wall_ms"] > 0 and row["job_per_task"]["cpu_ms"] > 0
        for row in printed["render"]
    )


def test_bench_model_ab_rounds_report_shares_of_the_peak(tmp_path):
    out = tmp_path / "ab.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_model",
            "--ab",
            "--sizes",
            "demo",
            "--repeats",
            "2",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    [result] = json.loads(out.read_text())  # unrounded: the table's figures are rounded
    assert result["size"] == "demo"
    assert result["peak_gflops"] == max(result["gemm_gflops"], result["ffn_gflops"]) > 0
    rows = [
        line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| demo |")
    ]
    assert [row[2].strip() for row in rows] == ["ase", "none"]
    for row in rows:
        measured = result[row[2].strip()]
        assert measured["gflops"] > 0 and measured["pairwise_share_of_peak"] > 0
        # the share is this row's rate over the peak, and the table prints that share
        assert math.isclose(measured["share_of_peak"], measured["gflops"] / result["peak_gflops"])
        assert row[6].strip() == f"{measured['share_of_peak']:.0%}"
    assert "adapter overhead" in done.stdout and "FFN GEMM (320x192x768)" in done.stdout


def test_reduced_decode_compares_both_decodes_on_the_same_scenes():
    printed = run_script(
        "bench.reduced_decode",
        "--sizes",
        "200x150:1,800x600:2",
        "--eval-side",
        "96",
        "--threads",
        "1",
    )
    small, large = printed["rows"]
    assert small["dct_scales"] == [1] and large["dct_scales"] == [2]  # 256 px at least
    tasks = {"semseg", "parts", "saliency", "normals", "edges"}
    for row in (small, large):
        assert set(row["agreement_at_upload_size"]) == set(row["metrics"]) == tasks
    for task, agreement in small["agreement_at_upload_size"].items():  # one decode, twice
        assert agreement["equal_share"] == 1.0 and agreement["max_difference"] == 0, task
        assert small["metrics"][task]["reduced_minus_full"] == 0.0
    shares = [a["equal_share"] for a in large["agreement_at_upload_size"].values()]
    assert all(0 < share <= 1 for share in shares) and min(shares) < 1  # another input


def test_bench_v2_encoding_times_every_form():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_v2",
            "--encoding",
            "--image",
            "64x48",
            "--requests",
            "3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    size, _, printed = done.stdout.strip().partition(" ")
    assert size == "64x48"
    times = json.loads(printed)
    assert set(times) == {"rest_body", "grpc_bytes", "grpc_protobuf"}
    assert all(value > 0 for value in times.values())
