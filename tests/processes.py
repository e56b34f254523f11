"""Real processes for the tests (servers, Prometheus) on 127.0.0.1: started with their output in
a log file, waited on until their readiness URL answers 200, stopped with SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningProcess:
    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log: Path  # its stdout and stderr

    @classmethod
    def start(
        cls, command: list[str], port: int, log: Path, ready_path: str, timeout_s: float, **popen
    ) -> Self:
        """``command`` (listening on ``port``), returned once ``ready_path`` answers 200."""
        with log.open("wb") as output:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, **popen)
        running = cls(process, f"http://127.0.0.1:{port}", log)
        running.wait_ready(ready_path, timeout_s)
        return running

    def wait_ready(self, path: str, timeout_s: float) -> None:
        """Until ``path`` answers 200; raises, with the log, if the process exits first or
        ``timeout_s`` passes (and then stops it)."""
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args[0]} exited:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.url}{path} not ready in {timeout_s} s:\n{self.log.read_text()}")

    def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``grace_s``; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()
