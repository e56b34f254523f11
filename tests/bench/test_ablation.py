"""bench/ablation.py on a tiny budget: rows per seed, the summary's statistics recomputed from
the per-seed rows, ASE minus MoE per seed, and --resume keeping finished rows."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from model.metrics import delta_m
from model.tasks import TASK_NAMES

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--steps",
    "2",
    "--backbone-steps",
    "2",
    "--size",
    "16",
    "--width",
    "32",
    "--depth",
    "1",
    "--eval-images",
    "4",
    "--workers",
    "0",
]
ROWS = ["single-task refs", "lora", "moe 16/4/0/4", "ase 16/3/1/4", "ase 32/6/2/2"]


def ablation(out: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.ablation", "--out", str(out), *TINY, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_seeds_summary_and_resume(tmp_path):
    first = ablation(tmp_path, "--seeds", "3")
    assert "seed 3 lora" in first
    kept = json.loads((tmp_path / "ablation.json").read_text())["per_seed"]["3"]
    second = ablation(tmp_path, "--seeds", "3", "5", "--resume")
    assert "seed 3 " not in second and "seed 5 ase 32/6/2/2" in second  # seed 3 not retrained
    report = json.loads((tmp_path / "ablation.json").read_text())
    per_seed = report["per_seed"]
    assert per_seed["3"] == kept and list(per_seed["5"]) == ROWS
    summary = report["summary"]
    assert summary["seeds"] == ["3", "5"]
    for row in ROWS:
        for task in TASK_NAMES:
            values = [per_seed[s][row][task] for s in ("3", "5")]
            stats = summary["summary"][row][task]
            assert stats["mean"] == pytest.approx(statistics.fmean(values))
            assert stats["std"] == pytest.approx(statistics.stdev(values))
        deltas = [delta_m(per_seed[s][row], per_seed[s]["single-task refs"]) for s in ("3", "5")]
        assert summary["summary"][row]["delta_m"]["mean"] == pytest.approx(statistics.fmean(deltas))
    minus = summary["ase_minus_moe"]["ase 16/3/1/4 - moe 16/4/0/4"]
    for seed in ("3", "5"):
        rows = per_seed[seed]
        assert minus[seed]["semseg"] == pytest.approx(
            rows["ase 16/3/1/4"]["semseg"] - rows["moe 16/4/0/4"]["semseg"]
        )
        assert minus[seed]["delta_m"] == pytest.approx(
            summary["delta_m"][seed]["ase 16/3/1/4"] - summary["delta_m"][seed]["moe 16/4/0/4"]
        )
    table = (tmp_path / "ablation.md").read_text()
    assert "Mean ± std over seeds 3, 5" in table and "| ase 32/6/2/2 - moe 16/4/0/4" not in table
    assert "ase 32/6/2/2 - moe 16/4/0/4, per seed:" in table
