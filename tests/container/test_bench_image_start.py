"""bench/image_start.py (docs/benchmarks.md's time to ready) runs on the built image: one
start each way, both ready."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.container.stack import COMPOSE_FILE
from tests.monitoring.tooling import REPO

pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]


def test_image_start_bench_times_both_ways(images):
    image = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["server"]["image"]
    command = [sys.executable, "-m", "bench.image_start", "--image", image, "--runs", "1"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [row["way"] for row in rows] == ["precompiled", "compiled_at_start"]
    assert all(row["median_ready_s"] >= row["median_warm_up_s"] > 0 for row in rows)
