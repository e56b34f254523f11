"""The Docker engine the container tests drive: the one already answering, or Debian's
containerd and dockerd started here (CI machines have no init system to start them) and stopped
when the tests end.

Without an engine the tests skip, naming what to install; with ``CI=true`` they fail instead
(.ci/run installs docker.io and runs them as root, which starting the daemons needs).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Debian's CLI, which matches its engine; another (static) `docker` may come first on PATH.
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").is_file() else shutil.which("docker")
CONTAINERD_SOCKET = Path("/run/containerd/containerd.sock")
INSTALL_HINT = "apt-get install docker.io mmdebstrap (the tests start containerd and dockerd)"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def unavailable(message: str) -> None:
    """Fail in CI, skip elsewhere."""
    message = f"{message}; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """The docker CLI; raises with its output when ``check`` and it fails."""
    result = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.returncode}\n{result.stderr}")
    return result


def engine_answers() -> bool:
    if DOCKER is None:
        return False
    try:
        answer = docker("version", "--format", "{{.Server.Version}}", timeout=10, check=False)
        return answer.returncode == 0
    except subprocess.TimeoutExpired:
        return False


def containerd_answers() -> bool:
    """Something listens on containerd's socket (a stale socket file is not enough)."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(CONTAINERD_SOCKET))
        except OSError:
            return False
    return True


def wait_for(ready: Callable[[], bool], timeout_s: float, what: str, process=None) -> None:
    """Until ``ready()``; raises naming ``what`` if ``process`` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: {process.args[0]} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(0.2)


@dataclass
class Engine:
    """The daemons this session started (none when an engine was already running)."""

    logs: Path
    started: list[subprocess.Popen] = field(default_factory=list)

    def start_daemon(self, command: list[str]) -> subprocess.Popen:
        log = self.logs / f"{Path(command[0]).name}.log"
        with log.open("ab") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(process)
        return process

    def log_tails(self, lines: int = 40) -> str:
        tails = []
        for log in sorted(self.logs.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append("\n".join([f"--- {log.name} ---", *tail]))
        return "\n".join(tails)

    def stop(self) -> None:
        """dockerd first (it stops the containers), then containerd; each waited on. Raises
        if one had to be killed."""
        stuck = []
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    stuck.append(process.args[0])
        self.started.clear()
        if stuck:
            raise RuntimeError(f"{stuck} did not stop within {STOP_TIMEOUT_S} s of SIGTERM")


def start_engine(logs: Path) -> Engine:
    """The running engine, or containerd and dockerd started now; unavailable() otherwise."""
    engine = Engine(logs)
    if engine_answers():
        return engine
    missing = [name for name in ("containerd", "dockerd") if shutil.which(name) is None]
    if DOCKER is None or missing:
        unavailable(f"no Docker engine answers and {missing or ['docker']} is not installed")
    if os.geteuid() != 0:
        unavailable("no Docker engine answers, and starting dockerd needs root")
    try:
        if not containerd_answers():
            containerd = engine.start_daemon(["containerd"])
            wait_for(containerd_answers, START_TIMEOUT_S, "containerd", containerd)
        dockerd = engine.start_daemon(["dockerd", f"--containerd={CONTAINERD_SOCKET}"])
        wait_for(engine_answers, START_TIMEOUT_S, "dockerd", dockerd)
    except (RuntimeError, TimeoutError) as error:
        tails = engine.log_tails()
        engine.stop()
        unavailable(f"the Docker engine did not start ({error})\n{tails}")
    return engine
