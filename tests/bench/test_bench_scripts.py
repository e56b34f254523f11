"""The scripts behind docs/benchmarks.md's server tables run and report what the docs read from
them (tiny counts: this checks the scripts, not the speed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(*args: str) -> dict:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_bench_server_reports_every_level_against_the_model(tmp_path):
    out = tmp_path / "server.json"
    printed = run_script("bench/bench_server.py", "--image", "96x160", "--requests", "4",
                         "--seconds", "30", "--threads", "1", "--json", str(out))  # fmt: skip
    assert json.loads(out.read_text()) == printed
    assert [level["concurrency"] for level in printed["server"]] == [1, 4, 16]
    for level in printed["server"]:
        assert level["requests"] == 4 and level["p50"] > 0
        spans = level["server_timing_p50_ms"]
        assert set(spans) == {"decode", "queue", "inference", "postprocess", "total"}
        assert spans["total"] >= spans["inference"] > 0
    assert printed["model_alone_ms"]["p50"] > 0
    overhead = printed["overhead_at_c1"]
    assert set(overhead) == {"client", "server", "in_request"} and overhead["in_request"] > 0


def test_bench_render_compares_encoders_on_the_same_maps():
    printed = run_script("bench/bench_render.py", "--repeats", "1")
    tasks = {row["task"] for row in printed["png"]}
    assert tasks == {"semseg", "parts", "saliency", "normals", "edges"}
    assert {row["image"] for row in printed["png"]} == {"128x128", "480x640"}
    assert all(row["pil_bytes"] > 0 and row["server_bytes"] > 0 for row in printed["png"])
    assert [row["image"] for row in printed["render"]] == ["128x128", "480x640"]
    assert all(row["in_turn"] > 0 and row["job_per_task"] > 0 for row in printed["render"])


def test_bench_model_ab_rounds_report_shares_of_the_peak(tmp_path):
    out = tmp_path / "ab.json"
    done = subprocess.run([sys.executable, "bench/bench_model.py", "--ab", "--sizes", "demo",
                           "--repeats", "2", "--threads", "1", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    [result] = json.loads(out.read_text())  # unrounded: the table's figures are rounded
    assert result["size"] == "demo"
    assert result["peak_gflops"] == max(result["gemm_gflops"], result["ffn_gflops"]) > 0
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines()
            if line.startswith("| demo |")]  # fmt: skip
    assert [row[2].strip() for row in rows] == ["ase", "none"]
    for row in rows:
        measured = result[row[2].strip()]
        assert measured["gflops"] > 0 and measured["pairwise_share_of_peak"] > 0
        # the share is this row's rate over the peak, and the table prints that share
        assert math.isclose(measured["share_of_peak"], measured["gflops"] / result["peak_gflops"])
        assert row[6].strip() == f"{measured['share_of_peak']:.0%}"
    assert "adapter overhead" in done.stdout and "FFN GEMM (320x192x768)" in done.stdout
