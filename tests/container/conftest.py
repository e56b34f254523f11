"""The container tests' fixtures: a Docker engine (started here where none runs), the base
images (stand-ins where absent: tests/container/standins.py), the project's image built by
Compose from its own Dockerfile, and the compose stack, taken down at the end.

``make compose-test`` runs these (``-m container``); ``make test`` leaves them out. A failed
test's report carries the containers' state and logs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.container import standins
from tests.container.engine import Engine, docker, start_engine
from tests.container.stack import COMPOSE_FILE, Stack

BUILD_TIMEOUT_S = 900
BASE_IMAGES = pytest.StashKey[list[str]]()
RUNNING_STACK = pytest.StashKey[Stack]()


@pytest.fixture(scope="session")
def container_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("container-logs")


@pytest.fixture(scope="session")
def engine(container_logs) -> Engine:
    engine = start_engine(container_logs)
    yield engine
    engine.stop()


def describe_base_image(name: str) -> str:
    """``name``: stand-in or not, and the version it runs (for the record in the summary)."""
    kind = "stand-in" if standins.is_stand_in(name) else "image"
    if "prometheus" in name:
        first = docker("run", "--rm", name, "--version").stdout.splitlines()[0]
        version = re.search(r"version (\S+)", first)[1]
    else:
        version = docker("run", "--rm", name, "python3", "--version").stdout.strip()
    return f"{name}: {kind}, {version}"


@pytest.fixture(scope="session")
def images(engine, container_logs, pytestconfig) -> list[str]:
    """The base images (stand-ins built where absent), then `compose build server`: the
    project's Dockerfile as docker-compose.yml builds it. Returns the base images' names."""
    bases = standins.stand_ins(COMPOSE_FILE)
    standins.build_missing(bases, container_logs)
    pytestconfig.stash[BASE_IMAGES] = [describe_base_image(base.name) for base in bases]
    Stack(container_logs).compose("build", "server", timeout=BUILD_TIMEOUT_S)
    return [base.name for base in bases]


@pytest.fixture(scope="module")
def stack(images, container_logs, pytestconfig) -> Stack:
    stack = Stack(container_logs)
    pytestconfig.stash[RUNNING_STACK] = stack
    yield stack
    stack.down()
    del pytestconfig.stash[RUNNING_STACK]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure (in a test or in bringing the stack up) reports the containers and logs."""
    outcome = yield
    report = outcome.get_result()
    stack = item.config.stash.get(RUNNING_STACK, None)
    if report.failed and stack is not None:
        report.sections.append(("containers", stack.diagnostics()))


def pytest_terminal_summary(terminalreporter, config):
    for line in config.stash.get(BASE_IMAGES, []):
        terminalreporter.write_line(f"base image {line}")
