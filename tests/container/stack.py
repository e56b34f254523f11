"""The project's compose stack as the tests drive it: Compose v2 (what `docker compose` is) on
the project's own docker-compose.yml, under a project name of its own, its ports moved to free
ones with the file's own settings (ASE_PORT, PROMETHEUS_PORT)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.container.engine import docker
from tests.monitoring.test_compose import compose_env
from tests.monitoring.tooling import REPO, compose_v2
from tests.processes import free_port

PROJECT = "ase-compose-test"
COMPOSE_FILE = REPO / "docker-compose.yml"
# Compose reads GRAFANA_ADMIN_PASSWORD whatever is started; Grafana is not (README).
WITHOUT_GRAFANA = {"GRAFANA_ADMIN_PASSWORD": "unused"}
UP_TIMEOUT_S = 240  # build excluded: a start, the model load and warm-up, one health check


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5):
    """``check()``'s first truthy value; AssertionError naming ``what`` (and the last value
    seen) after ``timeout_s``. HTTP errors count as not yet."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
            last = value
        except httpx.HTTPError as error:
            last = error
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")


@dataclass
class Stack:
    """One compose project; ``env`` and ``files`` are what the next command runs with."""

    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=lambda: [COMPOSE_FILE])
    server_port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def compose(self, *args: str, timeout: float = 120, check: bool = True):
        files = [arg for path in self.files for arg in ("-f", str(path))]
        command = [compose_v2(), "--project-directory", str(REPO), "-p", PROJECT, *files, *args]
        env = compose_env(**WITHOUT_GRAFANA, **self.env) | {
            "ASE_PORT": str(self.server_port),
            "PROMETHEUS_PORT": str(self.prometheus_port),
        }
        result = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        with (self.logs / "compose.log").open("a") as log:
            log.write(f"$ {' '.join(args)}\n{result.stdout}{result.stderr}\n")
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)}: {result.returncode}\n{result.stderr}")
        return result

    def up(self, *services: str) -> None:
        """`up -d --wait`: returns once every service is healthy by its own health check."""
        wait = ("--wait", "--wait-timeout", str(UP_TIMEOUT_S))
        self.compose("up", "-d", *wait, *services, timeout=UP_TIMEOUT_S + 60)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def inspect(self, service: str, template: str) -> str:
        return docker("inspect", "--format", template, self.container(service)).stdout.strip()

    def diagnostics(self) -> str:
        """What a failed run needs: the containers and their last log lines."""
        state = self.compose("ps", "-a", check=False).stdout
        logs = self.compose("logs", "--no-color", "--tail", "150", check=False)
        return f"{state}\n{logs.stdout}{logs.stderr}"

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)

    def query(self, promql: str) -> list[dict]:
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": promql}, timeout=10)
        answer.raise_for_status()
        return answer.json()["data"]["result"]

    def targets(self, job: str) -> list[dict]:
        answer = httpx.get(f"{self.prometheus}/api/v1/targets", timeout=10).json()
        return [t for t in answer["data"]["activeTargets"] if t["labels"]["job"] == job]
